"""Enrollment: pending, accepted, rejected, pre-authorized, batch tokens; certificates renewed,
rotated and revoked; every step audited; hostile requests refused with nothing stored."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from fleetkeeper.devices.models import Device, DeviceCertificate
from tests.conftest import Api, RuntimeFactory, api_for
from tests.helpers.devices import (
    FakeDevice,
    accepted_device,
    actions_for,
    b64,
    device_client,
    enroll,
    envelope,
    new_key,
    now_stamp,
    public_pem,
)


async def device_count(api: Api) -> int:
    async with api.runtime.database.session() as session:
        return int(await session.scalar(select(func.count()).select_from(Device)) or 0)


def certificate_of(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


async def test_pending_then_accepted_then_certificate(api: Api) -> None:
    admin = await api.admin_headers()
    device = FakeDevice(attributes={"site": "plant-3"})
    pending = await enroll(api.runtime, device)
    assert pending.status_code == 202
    assert pending.json()["status"] == "pending"
    assert pending.headers["retry-after"] == "30"
    queue = (await api.client.get("/api/v1/devices", params={"status": "pending"}, headers=admin)).json()[
        "items"
    ]
    assert [item["id"] for item in queue] == [device.device_id]
    assert queue[0]["identity"]["attributes"] == {"site": "plant-3"}

    again = await enroll(api.runtime, device)
    assert again.status_code == 202, "polling does not accept anything by itself"
    accepted = await api.client.post(f"/api/v1/devices/{device.device_id}/accept", headers=admin)
    assert accepted.json()["status"] == "accepted"

    answer = await enroll(api.runtime, device)
    assert answer.status_code == 200
    certificate = certificate_of(answer.json()["certificate"])
    assert certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == device.device_id
    assert certificate.public_key() == device.key.public_key()
    validity = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert timedelta(days=29) < validity <= timedelta(days=30, minutes=10)
    assert "BEGIN CERTIFICATE" in answer.json()["ca_certificate"]
    fetched_again = await enroll(api.runtime, device)
    assert fetched_again.json()["certificate"] == answer.json()["certificate"], (
        "one certificate, fetched twice"
    )
    assert await actions_for(api, device.device_id or "") == [
        "device.enrollment_requested",
        "device.accepted",
        "device.certificate_issued",
    ]


async def test_rejected_device_is_refused(api: Api) -> None:
    admin = await api.admin_headers()
    device = FakeDevice()
    await enroll(api.runtime, device)
    await api.client.post(f"/api/v1/devices/{device.device_id}/reject", headers=admin)
    refused = await enroll(api.runtime, device)
    assert refused.status_code == 403
    assert refused.json()["code"] == "enrollment_rejected"
    assert "device.rejected" in await actions_for(api, device.device_id or "")
    twice = await api.client.post(f"/api/v1/devices/{device.device_id}/accept", headers=admin)
    assert twice.json()["code"] == "not_pending"


async def test_preauthorized_device_is_accepted_at_first_contact(api: Api) -> None:
    admin = await api.admin_headers()
    device = FakeDevice(key=new_key("ecdsa"))
    registered = await api.client.post(
        "/api/v1/devices/preauthorize",
        json={"device_type": "rpi4", "serial": device.serial, "public_key": public_pem(device.key)},
        headers=admin,
    )
    assert registered.status_code == 201
    assert registered.json()["status"] == "preauthorized"
    impostor = FakeDevice(serial="SN-other", key=device.key)
    mismatch = await enroll(api.runtime, impostor)
    assert mismatch.status_code == 403
    assert mismatch.json()["code"] == "identity_mismatch"
    first = await enroll(api.runtime, device)
    assert first.status_code == 200
    assert first.json()["device_id"] == registered.json()["id"]
    assert await actions_for(api, registered.json()["id"]) == [
        "device.preauthorized",
        "device.enrollment_refused",
        "device.accepted",
        "device.certificate_issued",
    ]
    duplicate = await api.client.post(
        "/api/v1/devices/preauthorize",
        json={"device_type": "rpi4", "public_key": public_pem(device.key)},
        headers=admin,
    )
    assert duplicate.json()["code"] == "device_key_taken"


async def test_batch_token_accepts_into_a_group_up_to_its_uses(api: Api) -> None:
    admin = await api.admin_headers()
    await api.client.post("/api/v1/device-groups", json={"name": "line-7"}, headers=admin)
    created = await api.client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "factory", "max_uses": 2, "auto_accept": True, "group": "line-7"},
        headers=admin,
    )
    assert created.status_code == 201
    secret = created.json()["secret"]
    listed = await api.client.get("/api/v1/enrollment-tokens", headers=admin)
    assert secret not in listed.text
    first, second, third = (FakeDevice(token=secret) for _ in range(3))
    assert (await enroll(api.runtime, first)).status_code == 200
    assert (await enroll(api.runtime, second)).status_code == 200
    used_up = await enroll(api.runtime, third)
    assert used_up.status_code == 401
    assert used_up.json()["code"] == "invalid_enrollment_token"
    members = (await api.client.get("/api/v1/device-groups/line-7/devices", headers=admin)).json()["items"]
    assert {m["id"] for m in members} == {first.device_id, second.device_id}
    assert (await api.client.get("/api/v1/enrollment-tokens", headers=admin)).json()[0]["uses"] == 2


async def test_expired_revoked_and_forged_tokens(api: Api) -> None:
    admin = await api.admin_headers()
    token = (
        await api.client.post(
            "/api/v1/enrollment-tokens", json={"name": "t", "expires_in_hours": 1}, headers=admin
        )
    ).json()
    pending = await enroll(api.runtime, FakeDevice(token=token["secret"]))
    assert pending.status_code == 202, "without auto_accept a token only lets the device queue up"
    forged = await enroll(api.runtime, FakeDevice(token=token["token"]["id"] + ".not-the-secret"))
    assert forged.status_code == 401
    async with api.runtime.database.transaction() as session:
        from fleetkeeper.devices.models import EnrollmentToken

        row = await session.get(EnrollmentToken, token["token"]["id"])
        assert row is not None
        row.expires_at = row.created_at - timedelta(seconds=1)
    assert (await enroll(api.runtime, FakeDevice(token=token["secret"]))).status_code == 401
    other = (await api.client.post("/api/v1/enrollment-tokens", json={"name": "u"}, headers=admin)).json()
    await api.client.delete(f"/api/v1/enrollment-tokens/{other['token']['id']}", headers=admin)
    assert (await enroll(api.runtime, FakeDevice(token=other["secret"]))).status_code == 401


def _rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("make_body", "status", "code"),
    [
        (lambda d: {**d.enroll_body(), "signature": b64(b"x" * 64)}, 400, "invalid_signature"),
        (lambda d: envelope(d.key, d.enroll_payload(), signer=new_key()), 400, "invalid_signature"),
        (lambda d: d.enroll_body(timestamp=now_stamp(timedelta(minutes=-10))), 400, "stale_request"),
        (lambda d: d.enroll_body(timestamp=now_stamp(timedelta(minutes=10))), 400, "stale_request"),
        (lambda d: d.enroll_body(timestamp="yesterday"), 400, "stale_request"),
        (lambda d: d.enroll_body(nonce="short"), 400, "invalid_request"),
        (lambda d: d.enroll_body(type="fleetkeeper.rotate.v1"), 400, "invalid_request"),
        (lambda d: d.enroll_body(public_key="not a key"), 400, "invalid_public_key"),
        (lambda d: d.enroll_body(public_key=_rsa_pem()), 400, "invalid_public_key"),
        (lambda d: d.enroll_body(identity={"device_type": "x y"}), 422, "invalid_identity"),
        (
            lambda d: d.enroll_body(identity={"device_type": "ok", "attributes": {"k": "v" * 300}}),
            422,
            "invalid_identity",
        ),
        (lambda d: d.enroll_body(identity={"device_type": "ok", "mac": "zz"}), 422, "invalid_identity"),
        (lambda d: {"payload": "!!!", "signature": "AAAA"}, 400, "invalid_request"),
        (lambda d: {"payload": b64(b"[1, 2]"), "signature": "AAAA"}, 400, "invalid_request"),
        (lambda d: {"payload": b64(b"x" * 20000), "signature": "AAAA"}, 422, "validation_failed"),
        (lambda d: {"payload": "a"}, 422, "validation_failed"),
    ],
)
async def test_hostile_enrollments_are_refused_and_store_nothing(
    api: Api, make_body: Any, status: int, code: str
) -> None:
    device = FakeDevice()
    async with device_client(api.runtime) as client:
        response = await client.post("/device/v1/enroll", json=make_body(device))
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert await device_count(api) == 0


async def test_a_replayed_enrollment_is_refused(api: Api) -> None:
    device = FakeDevice()
    body = device.enroll_body()
    async with device_client(api.runtime) as client:
        assert (await client.post("/device/v1/enroll", json=body)).status_code == 202
        replay = await client.post("/device/v1/enroll", json=body)
    assert replay.status_code == 400
    assert replay.json()["code"] == "replayed_request"


async def test_renewal_over_mtls(api: Api) -> None:
    device = await accepted_device(api)
    async with device_client(api.runtime, device.certificate) as client:
        renewed = await client.post("/device/v1/certificate/renew")
    assert renewed.status_code == 200
    new = certificate_of(renewed.json()["certificate"])
    assert new.serial_number != certificate_of(device.certificate or "").serial_number
    assert new.public_key() == device.key.public_key()
    assert "device.certificate_renewed" in await actions_for(api, device.device_id or "")
    async with device_client(api.runtime, None) as client:
        assert (await client.post("/device/v1/certificate/renew")).status_code == 401


async def test_key_rotation_revokes_the_old_key(api: Api) -> None:
    device = await accepted_device(api)
    old_certificate = device.certificate or ""
    new_key_ = new_key("ecdsa")
    async with device_client(api.runtime, old_certificate) as client:
        rotated = await client.post("/device/v1/certificate/rotate", json=device.rotate_body(new_key_))
    assert rotated.status_code == 200, rotated.text
    assert certificate_of(rotated.json()["certificate"]).public_key() == new_key_.public_key()
    crl = x509.load_pem_x509_crl(api.runtime.pki.crl.read_bytes())
    assert (
        crl.get_revoked_certificate_by_serial_number(certificate_of(old_certificate).serial_number)
        is not None
    )
    async with device_client(api.runtime, old_certificate) as client:
        stale = await client.put("/device/v1/inventory", json={})
    assert stale.status_code == 401
    assert stale.json()["code"] == "certificate_revoked"
    async with device_client(api.runtime, rotated.json()["certificate"]) as client:
        assert (await client.put("/device/v1/inventory", json={"kernel": "6.1"})).status_code == 204
    assert "device.key_rotated" in await actions_for(api, device.device_id or "")


async def test_key_rotation_waits_for_approval_under_that_policy(runtime_factory: RuntimeFactory) -> None:
    runtime = await runtime_factory(device_key_rotation="approval")
    async with api_for(runtime) as api:
        admin = await api.admin_headers()
        device = await accepted_device(api)
        replacement = new_key()
        async with device_client(runtime, device.certificate) as client:
            waiting = await client.post("/device/v1/certificate/rotate", json=device.rotate_body(replacement))
            assert waiting.status_code == 202
            approved = await api.client.post(
                f"/api/v1/devices/{device.device_id}/key-rotation/approve", headers=admin
            )
            assert approved.status_code == 204
            done = await client.post("/device/v1/certificate/rotate", json=device.rotate_body(replacement))
        assert done.status_code == 200
        assert certificate_of(done.json()["certificate"]).public_key() == replacement.public_key()


async def test_decommission_revokes_and_publishes(api: Api) -> None:
    admin = await api.admin_headers()
    device = await accepted_device(api)
    serial = certificate_of(device.certificate or "").serial_number
    retired = await api.client.post(f"/api/v1/devices/{device.device_id}/decommission", headers=admin)
    assert retired.json()["status"] == "decommissioned"
    crl_pem = (await api.client.get("/api/v1/pki/crl.pem")).content
    assert x509.load_pem_x509_crl(crl_pem).get_revoked_certificate_by_serial_number(serial) is not None
    async with device_client(api.runtime) as client:
        assert (await client.get("/device/v1/crl.pem")).content == crl_pem
    assert api.runtime.device_tls.crl_number >= 1
    async with device_client(api.runtime, device.certificate) as client:
        refused = await client.put("/device/v1/inventory", json={})
    assert refused.json()["code"] == "certificate_revoked"
    assert (await enroll(api.runtime, device)).json()["code"] == "device_decommissioned"
    assert "device.decommissioned" in await actions_for(api, device.device_id or "")
    async with api.runtime.database.session() as session:
        rows = (
            await session.scalars(
                select(DeviceCertificate).where(DeviceCertificate.device_id == device.device_id)
            )
        ).all()
    assert all(row.revocation_reason == "cessation_of_operation" for row in rows)


async def test_a_revocation_on_another_replica_reaches_this_one(api: Api) -> None:
    from fleetkeeper.devices.certificates import bump_crl_number, reload_crl

    runtime = api.runtime
    assert not await reload_crl(runtime), "nothing new: nothing reloaded"
    before = runtime.device_tls.crl_number
    async with runtime.database.transaction() as session:
        await bump_crl_number(session)  # what a decommission on another replica leaves behind
    assert await reload_crl(runtime)
    assert runtime.device_tls.crl_number == before + 1
    crl = x509.load_pem_x509_crl(runtime.pki.crl.read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == before + 1

"""Inventory with limits, last-seen and change times, operator tags; a device reaches only its
own data; operators see and manage only devices in their groups."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from fleetkeeper.core.pki import generate_private_key
from fleetkeeper.devices.models import Device, DeviceAttribute
from tests.conftest import Api
from tests.helpers.devices import FakeDevice, accepted_device, device_client, enroll

REPORT = {
    "device_type": "rpi4",
    "os": {"name": "Debian GNU/Linux", "version": "12"},
    "kernel": "6.1.0-18-arm64",
    "agent_version": "0.1.0",
    "software": {"openssl": "3.0.11"},
    "network": {"eth0": {"mac": "dc:a6:32:01:02:03", "addresses": ["10.0.3.17/24"]}},
    "attributes": {"line": "7", "cores": 4},
}


async def attributes_of(api: Api, device_id: str) -> dict[str, tuple[str | None, float | None]]:
    async with api.runtime.database.session() as session:
        rows = await session.execute(
            select(DeviceAttribute.key, DeviceAttribute.value_text, DeviceAttribute.value_num).where(
                DeviceAttribute.device_id == device_id
            )
        )
        return {key: (text, number) for key, text, number in rows}


async def test_inventory_is_kept_and_indexed(api: Api) -> None:
    admin = await api.admin_headers()
    device = await accepted_device(api, attributes={"site": "plant-3"})
    async with device_client(api.runtime, device.certificate) as client:
        assert (await client.put("/device/v1/inventory", json=REPORT)).status_code == 204
    detail = (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=admin)).json()
    assert detail["inventory"] == REPORT
    assert detail["last_seen_at"] is not None
    first_change = detail["inventory_changed_at"]
    indexed = await attributes_of(api, device.device_id or "")
    assert indexed["os.version"] == ("12", 12.0)
    assert indexed["attributes.cores"] == ("4", 4.0)
    assert indexed["identity.site"] == ("plant-3", None)
    assert "network.eth0.addresses" not in indexed, "lists are kept, not indexed"

    async with device_client(api.runtime, device.certificate) as client:
        await client.put("/device/v1/inventory", json=REPORT)
    same = (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=admin)).json()
    assert same["inventory_changed_at"] == first_change, "an identical report changes nothing"

    tagged = await api.client.put(
        f"/api/v1/devices/{device.device_id}/tags",
        json={"tags": {"site": "plant-3", "owner": "ops"}},
        headers=admin,
    )
    assert tagged.json()["tags"] == {"site": "plant-3", "owner": "ops"}
    smaller = {"kernel": "6.6.0"}
    async with device_client(api.runtime, device.certificate) as client:
        await client.put("/device/v1/inventory", json=smaller)
    indexed = await attributes_of(api, device.device_id or "")
    assert indexed["kernel"] == ("6.6.0", None)
    assert "os.version" not in indexed, "a new report replaces the old one"
    assert indexed["tag.site"] == ("plant-3", None), "tags and identity stay"
    assert indexed["identity.site"] == ("plant-3", None)


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    "report",
    [
        {"blob": "x" * (70 * 1024)},
        _deep(8),
        {f"k{i}": i for i in range(1500)},
        {"bad key": 1},
        {"k": "x" * 2000},
        ["not", "an", "object"],
        "text",
    ],
    ids=["oversized", "too-deep", "too-many", "bad-key", "long-string", "array", "string"],
)
async def test_bad_inventory_is_refused_and_nothing_stored(api: Api, report: Any) -> None:
    device = await accepted_device(api)
    async with device_client(api.runtime, device.certificate) as client:
        response = await client.put("/device/v1/inventory", json=report)
    assert response.status_code in (413, 422), response.text
    assert response.json()["code"] in ("invalid_inventory", "payload_too_large")
    async with api.runtime.database.session() as session:
        stored = await session.get(Device, device.device_id)
    assert stored is not None
    assert stored.inventory == {}


async def test_a_device_reaches_only_its_own_data(api: Api) -> None:
    mine = await accepted_device(api)
    theirs = await accepted_device(api)
    async with device_client(api.runtime, mine.certificate) as client:
        # The device API has no device id to name: everything is about the caller's certificate.
        await client.put("/device/v1/inventory", json={"kernel": "mine"})
        rotate_theirs = await client.post(
            "/device/v1/certificate/rotate",
            json=FakeDevice(device_id=theirs.device_id, key=mine.key).rotate_body(FakeDevice().key),
        )
        assert rotate_theirs.status_code == 403
        assert rotate_theirs.json()["code"] == "wrong_device"
        for path in (
            f"/api/v1/devices/{theirs.device_id}",
            "/api/v1/devices",
            f"/device/v1/devices/{theirs.device_id}",
        ):
            response = await client.get(path)
            assert response.status_code in (401, 404), path
    async with api.runtime.database.session() as session:
        other = await session.get(Device, theirs.device_id)
    assert other is not None
    assert other.inventory == {}
    # A certificate this CA never issued for a known device (here: a fake serial) is refused.
    async with device_client(api.runtime, _foreign_certificate(api, theirs.device_id or "")) as client:
        response = await client.put("/device/v1/inventory", json={"kernel": "theirs?"})
    assert response.status_code == 401
    assert response.json()["code"] == "unknown_certificate"


def _foreign_certificate(api: Api, device_id: str) -> str:
    """A certificate from our CA naming another device, but never recorded as issued."""

    certificate = api.runtime.ca.issue(
        generate_private_key().public_key(),
        device_id,
        client=True,
        validity=__import__("datetime").timedelta(days=1),
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


async def test_operators_see_and_manage_only_their_groups(api: Api) -> None:
    admin = await api.admin_headers()
    for name in ("plant-3", "plant-4"):
        await api.client.post("/api/v1/device-groups", json={"name": name}, headers=admin)
    in_3, in_4 = FakeDevice(), FakeDevice()
    await enroll(api.runtime, in_3)
    await enroll(api.runtime, in_4)
    await api.client.post(
        "/api/v1/device-groups/plant-3/devices", json={"devices": [in_3.device_id]}, headers=admin
    )
    await api.client.post(
        "/api/v1/device-groups/plant-4/devices", json={"devices": [in_4.device_id]}, headers=admin
    )
    await api.client.post(
        "/api/v1/roles",
        json={
            "name": "plant-3-ops",
            "grants": [{"permission": "devices:read"}, {"permission": "devices:manage"}],
        },
        headers=admin,
    )
    ops = await api.create_user(
        "ops3", "tulip-orbit-canyon-7", roles=[{"role": "plant-3-ops", "device_groups": ["plant-3"]}]
    )
    listed = (await api.client.get("/api/v1/devices", headers=ops)).json()["items"]
    assert [item["id"] for item in listed] == [in_3.device_id]
    assert (await api.client.post(f"/api/v1/devices/{in_3.device_id}/accept", headers=ops)).status_code == 200
    outside = await api.client.post(f"/api/v1/devices/{in_4.device_id}/accept", headers=ops)
    assert outside.status_code == 404, "a device outside the caller's groups is not even there"
    assert (await api.client.get(f"/api/v1/devices/{in_4.device_id}", headers=ops)).status_code == 404
    no_group = await api.client.post("/api/v1/device-groups", json={"name": "mine"}, headers=ops)
    assert no_group.status_code == 403
    move = await api.client.post(
        "/api/v1/device-groups/plant-4/devices", json={"devices": [in_3.device_id]}, headers=ops
    )
    token = await api.client.post(
        "/api/v1/enrollment-tokens", json={"name": "t", "group": "plant-4"}, headers=ops
    )
    for unseen in (move, token):
        assert unseen.status_code == 404, "a group outside the caller's groups is not even there"
        assert unseen.json()["code"] == "group_not_found"


async def test_listing_sorts_and_pages(api: Api) -> None:
    admin = await api.admin_headers()
    devices = [FakeDevice(device_type=f"type-{i % 3}") for i in range(7)]
    for device in devices:
        await enroll(api.runtime, device)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, "sort": "device_type", "order": "desc"}
        if cursor:
            params["cursor"] = cursor
        page = (await api.client.get("/api/v1/devices", params=params, headers=admin)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(d.device_id for d in devices if d.device_id)
    assert len(seen) == 7
    types = [next(d.device_type for d in devices if d.device_id == i) for i in seen]
    assert types == sorted(types, reverse=True)
    bad = await api.client.get("/api/v1/devices", params={"cursor": "!!"}, headers=admin)
    assert bad.json()["code"] == "invalid_cursor"


async def test_a_device_cannot_write_tags_or_identity(api: Api) -> None:
    device = await accepted_device(api)
    async with device_client(api.runtime, device.certificate) as client:
        forged = await client.put("/device/v1/inventory", json={"tag": {"env": "prod"}, "kernel": "6.1"})
        assert forged.status_code == 422
        assert forged.json()["code"] == "invalid_inventory"
        assert (
            await client.put("/device/v1/inventory", json={"identity": {"serial": "X"}})
        ).status_code == 422
        assert (await client.put("/device/v1/inventory", json={"kernel": "6.1"})).status_code == 204
    async with api.runtime.database.session() as session:
        keys = set(
            await session.scalars(
                select(DeviceAttribute.key).where(DeviceAttribute.device_id == device.device_id)
            )
        )
    assert "tag.env" not in keys


async def test_large_but_valid_tag_changes_are_accepted(api: Api) -> None:
    admin = await api.admin_headers()
    device = FakeDevice()
    await enroll(api.runtime, device)
    tags = {f"k{i}": "v" * 256 for i in range(50)}
    response = await api.client.put(
        f"/api/v1/devices/{device.device_id}/tags", json={"tags": tags}, headers=admin
    )
    assert response.status_code == 200

"""Regressions for the security review of the first four issues: each test fails on the code
before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from fleetkeeper.devices.models import DeviceAttribute
from fleetkeeper.releases.artifact import validate_release
from fleetkeeper.releases.errors import ArtifactError
from tests.conftest import Api, bearer
from tests.devices.helpers import FakeDevice, device_client, enroll
from tests.devices.test_enrollment import accepted_device
from tests.releases.support import initialize, signed_artifact, upload


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


async def test_user_managers_cannot_widen_their_own_role_or_take_over_stronger_accounts(api: Api) -> None:
    admin = await api.admin_headers()
    await api.client.post(
        "/api/v1/roles", json={"name": "helpdesk", "grants": [{"permission": "users:manage"}]}, headers=admin
    )
    helpdesk = await api.create_user("hd", "tulip-orbit-canyon-7", roles=[{"role": "helpdesk"}])
    widened = await api.client.put(
        "/api/v1/roles/helpdesk",
        json={"grants": [{"permission": p} for p in ("users:manage", "audit:read", "devices:manage")]},
        headers=helpdesk,
    )
    assert widened.status_code == 403
    assert widened.json()["code"] == "cannot_grant_beyond_own"
    admin_id = (await api.client.get("/api/v1/me", headers=admin)).json()["user"]["id"]
    for method, path, body in [
        ("POST", f"/api/v1/users/{admin_id}/password-reset", None),
        ("PATCH", f"/api/v1/users/{admin_id}", {"disabled": True}),
        ("DELETE", f"/api/v1/users/{admin_id}", None),
        ("PUT", f"/api/v1/users/{admin_id}/roles", []),
    ]:
        response = await api.client.request(method, path, json=body, headers=helpdesk)
        assert response.status_code == 403, path
        assert response.json()["code"] == "cannot_administer_stronger_user"
    peer = await api.create_user("peer", "tulip-orbit-canyon-7", roles=[{"role": "helpdesk"}])
    peer_id = (await api.client.get("/api/v1/me", headers=peer)).json()["user"]["id"]
    assert (
        await api.client.post(f"/api/v1/users/{peer_id}/password-reset", headers=helpdesk)
    ).status_code == 200


async def test_tag_scoped_release_managers_do_not_touch_trust_or_others_tags(
    api: Api, tmp_path: Path
) -> None:
    admin = await api.admin_headers()
    scoped = await api.create_user(
        "rm", "tulip-orbit-canyon-7", roles=[{"role": "release-manager", "release_tags": ["a"]}]
    )
    refused = await api.client.post(
        "/api/v1/repository/trust", json={"root": {}, "targets": {}, "director_root": {}}, headers=scoped
    )
    assert refused.status_code == 403
    keys = await initialize(api, tmp_path)
    response = await upload(
        api, admin, await signed_artifact(api, keys, tmp_path, "fw", "1.0", b"x"), tags=["a", "b"]
    )
    assert response.status_code == 201
    kept = await api.client.put("/api/v1/releases/fw/1.0/tags", json={"tags": ["a"]}, headers=scoped)
    assert kept.json() == ["a", "b"], "the tag outside the caller's scope stays"


async def test_non_root_metadata_as_a_root_is_a_clear_422(api: Api, tmp_path: Path) -> None:
    admin = await api.admin_headers()
    from fleetkeeper.releases.keys import init_keys
    from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json
    from tests.releases.support import in_days

    init_keys(tmp_path / "k", threshold=1, count=1)
    trust = build_initial_trust(
        tmp_path / "k", online_keys_from_json(api.runtime.online_keys.public_keys()), in_days(9)
    )
    swapped = await api.client.post(
        "/api/v1/repository/trust",
        json={
            "root": trust.targets.to_dict(),
            "targets": trust.targets.to_dict(),
            "director_root": trust.director_root.to_dict(),
        },
        headers=admin,
    )
    assert swapped.status_code == 422
    assert swapped.json()["code"] == "invalid_metadata"


@pytest.mark.parametrize("name", [".", "..", ".hidden", "-x"])
def test_release_names_cannot_be_path_segments(name: str) -> None:
    release = {
        "format": "fleetkeeper-release-v1",
        "name": name,
        "version": "1.0",
        "release_counter": 1,
        "module": "file",
        "device_types": ["rpi4"],
        "depends": {},
        "provides": {},
        "payload": {"path": "x", "length": 1, "sha256": "0" * 64},
        "sbom": None,
    }
    with pytest.raises(ArtifactError):
        validate_release(release)


async def test_large_but_valid_changes_are_audited_not_refused(api: Api) -> None:
    admin = await api.admin_headers()
    device = FakeDevice()
    await enroll(api.runtime, device)
    tags = {f"k{i}": "v" * 256 for i in range(50)}
    response = await api.client.put(
        f"/api/v1/devices/{device.device_id}/tags", json={"tags": tags}, headers=admin
    )
    assert response.status_code == 200


async def test_api_tokens_wait_for_pending_actions_too(api: Api) -> None:
    admin = await api.admin_headers()
    reader = await api.create_user("r", "tulip-orbit-canyon-7", roles=[{"role": "read-only"}])
    token = (await api.client.post("/api/v1/me/tokens", json={"name": "t"}, headers=reader)).json()["secret"]
    await api.client.put("/api/v1/access/policy", json={"require_2fa_roles": ["read-only"]}, headers=admin)
    response = await api.client.get("/api/v1/devices", headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["code"] == "second_factor_enrollment_required"


async def test_scoped_operators_see_only_their_groups_enrollment_tokens(api: Api) -> None:
    admin = await api.admin_headers()
    for name in ("g1", "g2"):
        await api.client.post("/api/v1/device-groups", json={"name": name}, headers=admin)
    theirs = (
        await api.client.post("/api/v1/enrollment-tokens", json={"name": "t2", "group": "g2"}, headers=admin)
    ).json()
    await api.client.post(
        "/api/v1/roles", json={"name": "ops", "grants": [{"permission": "devices:manage"}]}, headers=admin
    )
    ops = await api.create_user(
        "ops", "tulip-orbit-canyon-7", roles=[{"role": "ops", "device_groups": ["g1"]}]
    )
    mine = (
        await api.client.post("/api/v1/enrollment-tokens", json={"name": "t1", "group": "g1"}, headers=ops)
    ).json()
    listed = [t["id"] for t in (await api.client.get("/api/v1/enrollment-tokens", headers=ops)).json()]
    assert listed == [mine["token"]["id"]]
    revoke = await api.client.delete(f"/api/v1/enrollment-tokens/{theirs['token']['id']}", headers=ops)
    assert revoke.status_code == 404

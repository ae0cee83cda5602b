"""Creating a deployment reads its release and its target as the caller may read them: what lies
outside their release tags or device groups answers as if it did not exist, before anything else
about the target is looked at."""

from __future__ import annotations

from typing import Any

import httpx2

from fleetkeeper.releases.models import Release
from tests.conftest import Api
from tests.helpers.deployments import add_devices
from tests.helpers.releases import a_release
from tests.helpers.responses import answer
from tests.helpers.users import PASSWORD, user_scoped_to_unfit_groups


async def tagged_release(api: Api, name: str, version: str, tags: list[str]) -> Release:
    return await a_release(api, name, version, counter=3, tags=tags)


def deployment(release: str, version: str, target: dict[str, Any]) -> dict[str, Any]:
    return {"name": "rollout", "release": release, "version": version, "target": target}


async def test_a_release_outside_my_tags_cannot_be_deployed(api: Api) -> None:
    await tagged_release(api, "fw-beta", "1.0", ["beta"])
    await tagged_release(api, "fw", "1.0", ["stable"])
    (device,) = await add_devices(api.runtime.database, 1, group="plant-3")
    deployer = await api.create_user(
        "stable-only",
        PASSWORD,
        roles=[{"role": "deployments-manager", "device_groups": ["plant-3"], "release_tags": ["stable"]}],
    )
    read = await api.client.get("/api/v1/releases/fw-beta/1.0", headers=deployer)
    assert read.status_code == 404
    refused = await api.client.post(
        "/api/v1/deployments", json=deployment("fw-beta", "1.0", {"devices": [device]}), headers=deployer
    )
    assert answer(refused) == answer(read), "the same 404 as reading the release"
    allowed = await api.client.post(
        "/api/v1/deployments", json=deployment("fw", "1.0", {"devices": [device]}), headers=deployer
    )
    assert allowed.status_code == 201, allowed.text


def same_shape(
    hidden: httpx2.Response, unknown: httpx2.Response, hidden_name: str, unknown_name: str
) -> None:
    """Two answers that differ only by the name the caller sent."""
    status, body = answer(hidden)
    body["detail"] = body["detail"].replace(hidden_name, unknown_name)
    assert (status, body) == answer(unknown)


async def test_devices_and_groups_outside_my_scope_answer_as_unknown_ones(api: Api) -> None:
    """Scope comes first: a device or group out of reach is not found, whether the target would
    have been empty, of another device type or fine."""
    await tagged_release(api, "fw", "1.0", ["stable"])
    await add_devices(api.runtime.database, 1, group="plant-3")
    (theirs,) = await add_devices(api.runtime.database, 1, group="plant-4")
    (gateway,) = await add_devices(api.runtime.database, 1, device_type="x86-gateway", group="plant-4")
    admin = await api.admin_headers()
    assert (
        await api.client.post("/api/v1/device-groups", json={"name": "plant-5"}, headers=admin)
    ).status_code == 201, "an empty group: its target would be empty"
    deployer = await api.create_user(
        "plant-3-deployer", PASSWORD, roles=[{"role": "deployments-manager", "device_groups": ["plant-3"]}]
    )

    async def create(target: dict[str, Any]) -> httpx2.Response:
        return await api.client.post(
            "/api/v1/deployments", json=deployment("fw", "1.0", target), headers=deployer
        )

    unknown_device = await create({"devices": ["dev_00000000000000000000000000"]})
    assert unknown_device.json()["code"] == "device_not_found"
    for target in ({"devices": [theirs]}, {"devices": [gateway]}):
        assert answer(await create(target)) == answer(unknown_device), target
    unknown_group = await create({"group": "plant-nope"})
    assert answer(unknown_group)[0:1] == (404,)
    assert unknown_group.json()["code"] == "group_not_found"
    for group in ("plant-4", "plant-5"):
        same_shape(await create({"group": group}), unknown_group, group, "plant-nope")


async def test_a_live_target_needs_a_group_devices_cannot_join_by_themselves(api: Api) -> None:
    """A scope on a group that reads what devices report reaches no device: it cannot vouch for
    the devices that will join a live target later, even while the group is empty."""
    await tagged_release(api, "fw", "1.0", ["stable"])
    admin = await api.admin_headers()
    for name, expression in (("reported", 'attributes.ring == "canary"'), ("tagged", 'tag.ring == "canary"')):
        created = await api.client.post(
            "/api/v1/device-groups", json={"name": name, "filter": expression}, headers=admin
        )
        assert created.status_code == 201, created.text
    # Such a scope is refused when given now (docs/access.md, "Scopes"); an older one stays.
    deployer = await user_scoped_to_unfit_groups(
        api, "ring-deployer", "deployments-manager", ["reported", "tagged"]
    )
    refused = await api.client.post(
        "/api/v1/deployments",
        json=deployment("fw", "1.0", {"group": "reported", "live": True}),
        headers=deployer,
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["groups"] == ["reported"]
    allowed = await api.client.post(
        "/api/v1/deployments",
        json=deployment("fw", "1.0", {"group": "tagged", "live": True}),
        headers=deployer,
    )
    assert allowed.status_code == 201, allowed.text

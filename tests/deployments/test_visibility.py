"""Who sees which deployment: a reader scoped to device groups sees the deployments that reach
their groups, and of those only their own devices; any other deployment answers as an unknown id."""

from __future__ import annotations

import asyncio

import pytest

from fleetkeeper.deployments import rollout
from fleetkeeper.deployments.models import CHUNK_SIZE
from tests.conftest import Api
from tests.helpers.deployments import add_devices, admin, request
from tests.helpers.releases import a_release
from tests.helpers.responses import answer
from tests.helpers.users import PASSWORD


async def reader_of(api: Api, *groups: str, role: str = "read-only") -> dict[str, str]:
    return await api.create_user(
        f"reader-{'-'.join(groups)}", PASSWORD, roles=[{"role": role, "device_groups": list(groups)}]
    )


async def test_a_scoped_reader_sees_only_deployments_that_reach_their_groups(api: Api) -> None:
    await a_release(api)
    mine = await add_devices(api.runtime.database, 2, group="plant-3")
    theirs = await add_devices(api.runtime.database, 2, group="plant-4")
    plant_3 = await rollout.create(api.runtime, admin(api), request(name="p3", target={"group": "plant-3"}))
    plant_4 = await rollout.create(api.runtime, admin(api), request(name="p4", target={"group": "plant-4"}))
    mixed = await rollout.create(
        api.runtime, admin(api), request(name="both", target={"devices": [mine[0], theirs[0]]})
    )
    reader = await reader_of(api, "plant-3")

    listed = (await api.client.get("/api/v1/deployments", headers=reader)).json()
    assert {item["id"] for item in listed} == {plant_3.id, mixed.id}
    everyone = (await api.client.get("/api/v1/deployments", headers=await api.admin_headers())).json()
    assert {item["id"] for item in everyone} == {plant_3.id, plant_4.id, mixed.id}

    unknown = "dep_00000000000000000000000000"
    for suffix in ("", "/devices", f"/devices/{theirs[0]}"):
        hidden = await api.client.get(f"/api/v1/deployments/{plant_4.id}{suffix}", headers=reader)
        nothing = await api.client.get(f"/api/v1/deployments/{unknown}{suffix}", headers=reader)
        assert hidden.status_code == 404, suffix
        if suffix.startswith("/devices/"):
            assert hidden.json()["code"] == "device_not_found", "the device is out of scope first"
        else:
            assert answer(hidden) == answer(nothing), suffix
            assert hidden.json()["code"] == "deployment_not_found"
    # A device of theirs is out of scope, as on every device route.
    assert (await api.client.get(f"/api/v1/devices/{theirs[0]}", headers=reader)).status_code == 404

    shown = (await api.client.get(f"/api/v1/deployments/{mixed.id}", headers=reader)).json()
    assert shown["target"] == {"devices": [mine[0]]}, "the device of plant-4 is not named"
    listed_devices = (await api.client.get(f"/api/v1/deployments/{mixed.id}/devices", headers=reader)).json()
    assert [item["device_id"] for item in listed_devices["items"]] == [mine[0]]


async def test_a_device_of_mine_in_a_deployment_i_cannot_see_is_not_a_clue(api: Api) -> None:
    """My device and a deployment that does not include it: the deployment is unknown to me, not
    a deployment my device is not part of."""
    await a_release(api)
    (mine,) = await add_devices(api.runtime.database, 1, group="plant-3")
    await add_devices(api.runtime.database, 1, group="plant-4")
    plant_4 = await rollout.create(api.runtime, admin(api), request(target={"group": "plant-4"}))
    reader = await reader_of(api, "plant-3")
    hidden = await api.client.get(f"/api/v1/deployments/{plant_4.id}/devices/{mine}", headers=reader)
    nothing = await api.client.get(f"/api/v1/deployments/dep_nope/devices/{mine}", headers=reader)
    assert answer(hidden) == answer(nothing)
    assert hidden.json()["code"] == "deployment_not_found"


async def test_a_scoped_deployer_cannot_act_on_a_deployment_they_cannot_see(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 1, group="plant-3")
    await add_devices(api.runtime.database, 1, group="plant-4")
    live_4 = await rollout.create(api.runtime, admin(api), request(target={"group": "plant-4", "live": True}))
    deployer = await reader_of(api, "plant-3", role="deployments-manager")
    for action in ("pause", "abort", "finish"):
        hidden = await api.client.post(f"/api/v1/deployments/{live_4.id}/{action}", headers=deployer)
        nothing = await api.client.post(f"/api/v1/deployments/dep_nope/{action}", headers=deployer)
        assert answer(hidden) == answer(nothing), action
        assert hidden.json()["code"] == "deployment_not_found"


@pytest.mark.parametrize("live", [False, True], ids=["chunks", "rows"])
async def test_a_reader_finds_their_device_among_many_however_it_is_stored(api: Api, live: bool) -> None:
    """A fixed target keeps its devices as chunks of ids, a live one as rows: both are searched
    for a device of the reader's groups (the one of plant-3 sits in the last chunk)."""
    await a_release(api)
    await add_devices(api.runtime.database, 2 * CHUNK_SIZE + 10, group="wide")
    await asyncio.sleep(0.01)  # ids sort by creation time: this one comes last
    (mine,) = await add_devices(api.runtime.database, 1, group="plant-3")
    await add_to_group(api, "wide", mine)
    deployment = await rollout.create(
        api.runtime, admin(api), request(target={"group": "wide", "live": live})
    )
    reader = await reader_of(api, "plant-3")
    shown = await api.client.get(f"/api/v1/deployments/{deployment.id}", headers=reader)
    assert shown.status_code == 200, shown.text
    assert shown.json()["target"] == {"group": None, "live": live}, "not a group of theirs: not named"
    listed = (await api.client.get("/api/v1/deployments", headers=reader)).json()
    assert [item["id"] for item in listed] == [deployment.id]
    nobody = await reader_of(api, "plant-9")
    assert (await api.client.get("/api/v1/deployments", headers=nobody)).json() == []


async def add_to_group(api: Api, group: str, device_id: str) -> None:
    admin_headers = await api.admin_headers()
    added = await api.client.post(
        f"/api/v1/device-groups/{group}/devices", json={"devices": [device_id]}, headers=admin_headers
    )
    assert added.status_code == 204, added.text


async def test_only_a_reader_of_the_whole_target_sees_its_numbers(api: Api) -> None:
    """Counters count every device of a deployment: a reader who sees part of it would learn how
    many devices lie outside their groups and how they fare. They see no numbers, only their
    devices; a reader of the whole target sees them as before."""
    await a_release(api)
    mine = await add_devices(api.runtime.database, 2, group="plant-3")
    theirs = await add_devices(api.runtime.database, 3, group="plant-4")
    whole = await rollout.create(api.runtime, admin(api), request(name="p3", target={"group": "plant-3"}))
    listed_mine = await rollout.create(api.runtime, admin(api), request(name="l3", target={"devices": mine}))
    part = await rollout.create(
        api.runtime, admin(api), request(name="both", target={"devices": [*mine, *theirs]})
    )
    reader = await reader_of(api, "plant-3")
    for deployment_id in (whole.id, listed_mine.id):
        shown = (await api.client.get(f"/api/v1/deployments/{deployment_id}", headers=reader)).json()
        assert shown["statistics"]["overall"]["total"] == 2
        assert shown["progress"] == {"1": {"pending": 2}}
    shown = (await api.client.get(f"/api/v1/deployments/{part.id}", headers=reader)).json()
    assert (shown["statistics"], shown["progress"], shown["waiting_for_devices"]) == (None, {}, None)
    by_id = {
        item["id"]: item for item in (await api.client.get("/api/v1/deployments", headers=reader)).json()
    }
    assert by_id[part.id]["statistics"] is None
    assert by_id[part.id]["progress"] == {}
    assert by_id[whole.id]["statistics"]["overall"]["total"] == 2
    admin_view = await api.client.get(f"/api/v1/deployments/{part.id}", headers=await api.admin_headers())
    assert admin_view.json()["statistics"]["overall"]["total"] == 5


async def test_a_device_of_mine_in_another_deployment_does_not_show_this_one(api: Api) -> None:
    """My device has a row in a live deployment (rows, not chunks); a deployment of plant-4 alone
    is still not mine to see: the search looks in each deployment's own rows and chunks."""
    await a_release(api)
    await add_devices(api.runtime.database, 1, group="plant-3")
    await add_devices(api.runtime.database, 1, group="plant-4")
    live_3 = await rollout.create(api.runtime, admin(api), request(target={"group": "plant-3", "live": True}))
    fixed_4 = await rollout.create(api.runtime, admin(api), request(target={"group": "plant-4"}))
    live_4 = await rollout.create(api.runtime, admin(api), request(target={"group": "plant-4", "live": True}))
    reader = await reader_of(api, "plant-3", "plant-9")  # plant-9 does not exist: no shortcut by name
    listed = (await api.client.get("/api/v1/deployments", headers=reader)).json()
    assert [item["id"] for item in listed] == [live_3.id]
    for hidden in (fixed_4, live_4):
        assert (await api.client.get(f"/api/v1/deployments/{hidden.id}", headers=reader)).status_code == 404

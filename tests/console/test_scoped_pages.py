"""The console shows a reader scoped to device groups what the API shows them: the deployments that
reach their groups (in the list, on the dashboard, by address), and only their groups. In process,
over plain HTTP with the session cookie (no browser needed), on both databases."""

from __future__ import annotations

from fleetkeeper.deployments import rollout
from tests.conftest import Api
from tests.helpers.console import console_as
from tests.helpers.deployments import add_devices, admin, request
from tests.helpers.releases import a_release
from tests.helpers.users import PASSWORD


async def test_console_pages_show_a_scoped_reader_only_the_deployments_that_reach_them(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 2, group="plant-3")
    await add_devices(api.runtime.database, 2, group="plant-4")
    mine = await rollout.create(
        api.runtime, admin(api), request(name="rollout-plant-3", target={"group": "plant-3"})
    )
    theirs = await rollout.create(
        api.runtime, admin(api), request(name="rollout-plant-4", target={"group": "plant-4"})
    )
    await api.create_user(
        "reader-3", PASSWORD, roles=[{"role": "deployments-manager", "device_groups": ["plant-3"]}]
    )

    async with console_as(api, "reader-3") as console:
        listed = await console.get("/deployments")
        assert listed.status_code == 200
        assert "rollout-plant-3" in listed.text
        assert "rollout-plant-4" not in listed.text
        assert theirs.id not in listed.text
        for path in (f"/deployments/{theirs.id}", f"/deployments/{theirs.id}/live"):
            hidden = await console.get(path)
            assert hidden.status_code == 404, path
            assert "rollout-plant-4" not in hidden.text
        assert (await console.get(f"/deployments/{mine.id}")).status_code == 200
        for path in ("/", "/dashboard/live"):
            dashboard = await console.get(path)
            assert dashboard.status_code == 200
            assert "rollout-plant-3" in dashboard.text, path
            assert "rollout-plant-4" not in dashboard.text, path
        offered = await console.get("/deployments/new")
        assert 'value="plant-3"' in offered.text
        assert 'value="plant-4"' not in offered.text, "groups outside the scope are not offered"

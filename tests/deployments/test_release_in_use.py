"""A release that a deployment still needs is not deleted (409 release_in_use, naming the
deployments the caller sees); one whose deployments have all ended is, and their history stays
readable (docs/deployments.md, "Deleting a release"). Through the real API, on both databases."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.deployments import lifecycle, rollout
from fleetkeeper.deployments.models import Deployment
from fleetkeeper.releases.models import Release
from tests.conftest import Api
from tests.helpers.console import console_as
from tests.helpers.deployments import add_devices, admin, deploy, fleet_of, request, send
from tests.helpers.releases import a_release
from tests.helpers.users import PASSWORD

RELEASE = "/api/v1/releases/fw/2.0"


async def deletions(api: Api) -> list[str | None]:
    async with api.runtime.database.session() as session:
        rows = await session.scalars(
            select(AuditRecord.object_id).where(AuditRecord.action == "release.deleted")
        )
        return list(rows)


@pytest.mark.parametrize("status", ["scheduled", "active", "paused"])
async def test_a_release_that_a_deployment_has_not_ended_with_is_not_deleted(api: Api, status: str) -> None:
    release = await a_release(api)
    await add_devices(api.runtime.database, 2, group="fleet")
    start_at = datetime.now(UTC) + timedelta(days=1) if status == "scheduled" else None
    deployment = await rollout.create(
        api.runtime, admin(api), request(name="to the fleet", start_at=start_at)
    )
    if status == "paused":
        await lifecycle.change_state(api.runtime, admin(api), deployment.id, "pause")
    headers = await api.admin_headers()

    refused = await api.client.delete(RELEASE, headers=headers)
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["code"] == "release_in_use"
    assert '"to the fleet"' in problem["detail"]
    assert "abort" in problem["detail"]
    assert "finish" in problem["detail"]
    assert problem["deployments"] == [{"id": deployment.id, "name": "to the fleet", "status": status}]
    assert (await api.client.get(RELEASE, headers=headers)).status_code == 200, "the release stays"
    assert await deletions(api) == []

    await lifecycle.change_state(api.runtime, admin(api), deployment.id, "abort")
    assert (await api.client.delete(RELEASE, headers=headers)).status_code == 204, "an aborted one has ended"
    assert await deletions(api) == [release.id]


async def test_the_refusal_names_a_few_deployments_and_counts_the_rest(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 1, group="fleet")
    for number in range(5):
        await rollout.create(api.runtime, admin(api), request(name=f"wave {number}"))

    refused = await api.client.delete(RELEASE, headers=await api.admin_headers())
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert [name for name in (f"wave {n}" for n in range(5)) if f'"{name}"' in detail] == [
        "wave 0",
        "wave 1",
        "wave 2",
    ], "the oldest few, by name"
    assert "2 more" in detail
    assert len(refused.json()["deployments"]) == 3


async def test_a_release_manager_is_told_nothing_of_deployments_they_do_not_see(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 1, group="plant-3")
    await add_devices(api.runtime.database, 1, group="plant-4")
    await rollout.create(
        api.runtime, admin(api), request(name="rollout-plant-4", target={"group": "plant-4"})
    )
    manager = await api.create_user(
        "releases-3", PASSWORD, roles=[{"role": "release-manager", "device_groups": ["plant-3"]}]
    )

    refused = await api.client.delete(RELEASE, headers=manager)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "release_in_use"
    assert "rollout-plant-4" not in refused.text
    assert refused.json()["deployments"] == []
    assert "you do not see" in refused.json()["detail"]

    mine = await rollout.create(
        api.runtime, admin(api), request(name="rollout-plant-3", target={"group": "plant-3"})
    )
    refused = await api.client.delete(RELEASE, headers=manager)
    assert [shown["id"] for shown in refused.json()["deployments"]] == [mine.id]
    assert '"rollout-plant-3"' in refused.json()["detail"]
    assert "rollout-plant-4" not in refused.text


async def test_a_finished_deployment_keeps_its_history_when_its_release_is_deleted(api: Api) -> None:
    await a_release(api)
    devices = await fleet_of(api, 2)
    deployment = await deploy(api, name="fw 2.0 everywhere")
    for device in devices:
        assert (await send(api, device, deployment["id"], "success", 1)).status_code == 200
    headers = await api.admin_headers()
    shown = await api.client.get(f"/api/v1/deployments/{deployment['id']}", headers=headers)
    assert shown.json()["status"] == "finished"

    assert (await api.client.delete(RELEASE, headers=headers)).status_code == 204

    shown = await api.client.get(f"/api/v1/deployments/{deployment['id']}", headers=headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["release_id"] == deployment["release_id"]
    assert shown.json()["statistics"]["overall"]["succeeded"] == 2
    listed = await api.client.get("/api/v1/deployments", headers=headers)
    assert [item["id"] for item in listed.json()] == [deployment["id"]]
    device_id = devices[0].device_id
    history = await api.client.get(
        f"/api/v1/deployments/{deployment['id']}/devices/{device_id}", headers=headers
    )
    assert history.status_code == 200, history.text
    assert [event["status"] for event in history.json()["events"]] == ["success"]
    of_device = await api.client.get(f"/api/v1/devices/{device_id}/deployments", headers=headers)
    assert [item["deployment_id"] for item in of_device.json()["items"]] == [deployment["id"]]
    again = await send(api, devices[0], deployment["id"], "success", 1)
    assert again.status_code == 200, "a device repeating its last report is answered as before"

    await api.create_user("operator", PASSWORD, roles=[{"role": "admin"}])
    async with console_as(api, "operator") as console:
        for path in ("/deployments", f"/deployments/{deployment['id']}", f"/devices/{device_id}"):
            page = await console.get(path)
            assert page.status_code == 200, path
            assert "fw 2.0 everywhere" in page.text, path
        detail = await console.get(f"/deployments/{deployment['id']}")
        assert "fw 2.0 (deleted)" in detail.text
        assert "fw 2.0 (deleted)" in (await console.get("/deployments")).text
        assert 'href="/releases/fw/2.0"' not in detail.text, "no link to a release that is gone"


async def test_a_deletion_and_a_new_deployment_of_the_release_take_turns(api: Api) -> None:
    """A deployment created while the release is being deleted: one of them waits for the other,
    so that no deployment ever names a deleted release (on SQLite the write lock orders them)."""
    release = await a_release(api)
    await add_devices(api.runtime.database, 1, group="fleet")
    async with api.runtime.database.transaction() as session:
        held = await session.get(Release, release.id, with_for_update=True)
        assert held is not None
        held.deleted_at = datetime.now(UTC)
        await session.flush()
        creating = asyncio.create_task(rollout.create(api.runtime, admin(api), request(name="late")))
        await asyncio.sleep(0.5)
        assert not creating.done(), "the new deployment waits for the deletion"
    with pytest.raises(ProblemError) as refused:
        await creating
    assert refused.value.code == "release_not_found"


async def test_a_deletion_waits_for_a_deployment_being_created_and_sees_it(api: Api) -> None:
    """The other order: a deployment of the release is being written (its row holds the release
    as a foreign key does) when the deletion comes; the deletion waits, then is refused."""
    release = await a_release(api)
    headers = await api.admin_headers()
    async with api.runtime.database.transaction() as session:
        session.add(
            Deployment(
                id=new_id("dep"),
                number=await rollout.next_number(session),
                name="being created",
                release_id=release.id,
                status="active",
                target={"devices": []},
                phases=[{"size": {"percent": 100}, "advance": "auto", "success_percent": 100}],
            )
        )
        await session.flush()
        deleting = asyncio.create_task(api.client.delete(RELEASE, headers=headers))
        await asyncio.sleep(0.5)
        assert not deleting.done(), "the deletion waits for the deployment being created"
    refused = await deleting
    assert refused.status_code == 409, refused.text
    assert '"being created"' in refused.json()["detail"]


def test_every_process_that_serves_the_deletion_checks_deployments() -> None:
    """The deployments domain's check is registered when the composition root wires the domains;
    the management app, which serves DELETE /api/v1/releases/{name}/{version}, does so in a fresh
    interpreter too."""
    program = (
        "from fleetkeeper.server.app import management_routers\n"
        "from fleetkeeper.releases import service\n"
        "management_routers()\n"
        "print(sorted(check.__module__ for check in service.in_use_checks()))\n"
    )
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['fleetkeeper.deployments.release_use']"

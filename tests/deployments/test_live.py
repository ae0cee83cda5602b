"""Live targets: a deployment to a group with "live": true takes in devices that join the group
later and lets go of those that leave before starting; it waits for devices until an operator
finishes it; creating one needs devices:deploy on the group itself. Real devices through the
device API where the device side matters, bulk rows where the set-based statements do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.audit.service import SYSTEM
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.deployments import live, progress, rollout
from fleetkeeper.deployments.models import Deployment, DeploymentDevice
from fleetkeeper.deployments.webhook_models import WebhookDelivery
from fleetkeeper.deployments.webhooks import create_webhook
from tests.conftest import Api
from tests.helpers.deployments import (
    add_devices,
    admin,
    current,
    devices_of,
    director_targets,
    request,
    scoped,
    send,
)
from tests.helpers.devices import FakeDevice, accepted_device
from tests.helpers.releases import a_release

SITE_GROUP = "plant-3"
Headers = dict[str, str]


@pytest.fixture
async def headers(api: Api) -> Headers:
    """The administrator's headers, signed in once: sign-ins are rate limited per account."""
    return await api.admin_headers()


async def site_group(api: Api, headers: Headers) -> None:
    created = await api.client.post(
        "/api/v1/device-groups",
        json={"name": SITE_GROUP, "filter": 'tag.site == "plant-3"'},
        headers=headers,
    )
    assert created.status_code == 201, created.text


async def tag(api: Api, headers: Headers, device: FakeDevice, **tags: str) -> None:
    response = await api.client.put(
        f"/api/v1/devices/{device.device_id}/tags", json={"tags": tags}, headers=headers
    )
    assert response.status_code == 200, response.text


async def shown(api: Api, headers: Headers, deployment_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def deploy(api: Api, headers: Headers, **body: Any) -> dict[str, Any]:
    payload = {"name": "fw 2.0", "release": "fw", "version": "2.0", **body}
    response = await api.client.post("/api/v1/deployments", json=payload, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def rows(api: Api, deployment_id: str) -> dict[str, tuple[int, str]]:
    """device id -> (phase, status) of the deployment's devices."""
    return await devices_of(api, deployment_id)


async def audit_details(api: Api, action: str) -> list[dict[str, Any]]:
    async with api.runtime.database.session() as session:
        records = (
            await session.scalars(
                select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)
            )
        ).all()
    return [record.details_object() for record in records]


async def test_devices_joining_a_dynamic_group_are_added_in_the_current_phase_and_leavers_removed(
    api: Api,
    headers: Headers,
) -> None:
    await a_release(api)
    await site_group(api, headers)
    first, second = await accepted_device(api, headers), await accepted_device(api, headers)
    await tag(api, headers, first, site="plant-3")
    await tag(api, headers, second, site="plant-3")
    deployment = await deploy(
        api,
        headers,
        target={"group": SITE_GROUP, "live": True},
        phases=[{"size": {"count": 1}, "success_percent": 50}, {"size": {"percent": 100}}],
    )
    placed = await rows(api, deployment["id"])
    phase_one = next(d for d in (first, second) if placed[d.device_id or ""][0] == 0)
    assert deployment["target"] == {"group": SITE_GROUP, "live": True}
    assert deployment["progress"] == {"1": {"pending": 1}, "2": {"pending": 1}}

    joiner = await accepted_device(api, headers)
    nothing = await live.sync_live_deployment(api.runtime, deployment["id"])
    assert (nothing.added, nothing.removed) == (0, 0), "not a member yet"
    await tag(api, headers, joiner, site="plant-3")
    joined = await live.sync_live_deployment(api.runtime, deployment["id"])
    assert (joined.added, joined.removed) == (1, 0)
    assert (await rows(api, deployment["id"]))[joiner.device_id or ""] == (0, "pending"), "phase 1 is open"
    assert await current(api, joiner) == deployment["id"]
    assert await director_targets(api, joiner) == ["fw/2.0/fw.bin"]
    again = await live.sync_live_deployment(api.runtime, deployment["id"])
    assert (again.added, again.removed) == (0, 0), "a second pass changes nothing"

    # Half of phase 1 succeeds: phase 2 opens, and later members join phase 2.
    assert (await send(api, phase_one, deployment["id"], "success", 1)).status_code == 200
    assert (await shown(api, headers, deployment["id"]))["current_phase"] == 2
    late = await accepted_device(api, headers)
    await tag(api, headers, late, site="plant-3")
    await live.sync_live_deployment(api.runtime, deployment["id"])
    assert (await rows(api, deployment["id"]))[late.device_id or ""] == (1, "pending")

    # Leaving: a device that never started goes; one that reported anything stays.
    await tag(api, headers, late, site="plant-9")
    await tag(api, headers, joiner, site="plant-9")
    assert (await send(api, joiner, deployment["id"], "downloading", 1)).status_code == 200
    left = await live.sync_live_deployment(api.runtime, deployment["id"])
    assert (left.added, left.removed) == (0, 1)
    remaining = await rows(api, deployment["id"])
    assert late.device_id not in remaining
    assert remaining[joiner.device_id or ""] == (0, "downloading")
    assert await current(api, late) is None
    async with api.runtime.database.session() as session:
        counters = await progress.counts_of(session, deployment["id"])
        assert counters == await progress.recount(session, deployment["id"]), "joins and leaves are counted"
    assert [(d["added"], d["removed"]) for d in await audit_details(api, "deployment.live_synced")] == [
        (1, 0),
        (1, 0),
        (0, 1),
    ]


async def test_a_device_no_longer_accepted_leaves(api: Api, headers: Headers) -> None:
    await a_release(api)
    await site_group(api, headers)
    staying, going = await accepted_device(api, headers), await accepted_device(api, headers)
    for device in (staying, going):
        await tag(api, headers, device, site="plant-3")
    deployment = await deploy(api, headers, target={"group": SITE_GROUP, "live": True})
    gone = await api.client.post(f"/api/v1/devices/{going.device_id}/decommission", headers=headers)
    assert gone.status_code == 200, gone.text
    result = await live.sync_live_deployment(api.runtime, deployment["id"])
    assert result.removed == 1
    assert set(await rows(api, deployment["id"])) == {staying.device_id}


async def test_a_live_deployment_waits_for_devices_until_an_operator_finishes_it(
    api: Api, headers: Headers
) -> None:
    await a_release(api)
    await site_group(api, headers)
    await create_webhook(
        api.runtime.database,
        SYSTEM,
        url="http://127.0.0.1:9/h",
        events=["deployment.finished"],
        allow_private=True,
    )
    first = await accepted_device(api, headers)
    await tag(api, headers, first, site="plant-3")
    deployment = await deploy(api, headers, target={"group": SITE_GROUP, "live": True})
    assert deployment["waiting_for_devices"] is False
    assert (await send(api, first, deployment["id"], "success", 1)).status_code == 200
    waiting = await shown(api, headers, deployment["id"])
    assert (waiting["status"], waiting["waiting_for_devices"]) == ("active", True), "every device is done"

    second = await accepted_device(api, headers)
    await tag(api, headers, second, site="plant-3")
    await live.sync_live_deployment(api.runtime, deployment["id"])
    assert (await shown(api, headers, deployment["id"]))["waiting_for_devices"] is False
    assert (await send(api, second, deployment["id"], "downloading", 1)).status_code == 200

    # Finishing while a device is still installing: no more followers, done when it is.
    ended = await api.client.post(f"/api/v1/deployments/{deployment['id']}/finish", headers=headers)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "active"
    assert ended.json()["target"] == {"group": SITE_GROUP, "live": False}
    third = await accepted_device(api, headers)
    await tag(api, headers, third, site="plant-3")
    assert not (await live.sync_live_deployment(api.runtime, deployment["id"])).followed
    assert await current(api, third) is None
    assert (await send(api, second, deployment["id"], "success", 2)).status_code == 200
    finished = await shown(api, headers, deployment["id"])
    assert finished["status"] == "finished"
    assert finished["finished_at"] is not None
    assert await audit_details(api, "deployment.live_ended") == [{"group": SITE_GROUP, "devices_not_done": 1}]
    async with api.runtime.database.session() as session:
        assert (await session.scalars(select(WebhookDelivery.event))).all() == ["deployment.finished"]

    twice = await api.client.post(f"/api/v1/deployments/{deployment['id']}/finish", headers=headers)
    assert (twice.status_code, twice.json()["code"]) == (409, "not_live")


async def test_finishing_a_live_deployment_whose_devices_are_done_ends_it_at_once(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 0, group="later")
    deployment = await rollout.create(
        api.runtime, admin(api), request(target={"group": "later", "live": True})
    )
    assert deployment.status == "active", "a live target may start empty"
    ended = await live.finish(api.runtime, admin(api), deployment.id)
    assert (ended.status, ended.finished_at is not None) == ("finished", True)
    with pytest.raises(ProblemError) as not_empty:
        await rollout.create(api.runtime, admin(api), request(target={"group": "later"}))
    assert not_empty.value.code == "empty_target", "a target that is not live still needs devices"
    static = await rollout.create(
        api.runtime,
        admin(api),
        request(target={"devices": await add_devices(api.runtime.database, 1, group="later")}),
    )
    with pytest.raises(ProblemError) as refused:
        await live.finish(api.runtime, admin(api), static.id)
    assert (refused.value.status, refused.value.code) == (409, "not_live")


async def test_a_live_static_group_follows_its_members_and_skips_other_device_types(
    api: Api, headers: Headers
) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 2, group="fleet")
    deployment = await rollout.create(
        api.runtime, admin(api), request(target={"group": "fleet", "live": True})
    )
    added = await add_devices(api.runtime.database, 3, group="fleet")
    foreign = await add_devices(api.runtime.database, 2, device_type="x86-gateway", group="fleet")
    result = await live.sync_live_deployment(api.runtime, deployment.id)
    assert (result.added, result.removed, result.incompatible) == (3, 0, 2)
    present = await rows(api, deployment.id)
    assert set(added) <= set(present)
    assert not set(foreign) & set(present), "a release for rpi4 is not sent to x86 gateways"
    assert (await audit_details(api, "deployment.live_synced"))[0]["incompatible_skipped"] == 2

    removed = await api.client.request(
        "DELETE", "/api/v1/device-groups/fleet/devices", json={"devices": added[:2]}, headers=headers
    )
    assert removed.status_code == 204, removed.text
    result = await live.sync_live_deployment(api.runtime, deployment.id)
    assert (result.added, result.removed, result.incompatible) == (0, 2, 2)
    assert len(await rows(api, deployment.id)) == 3


async def test_the_pass_covers_active_paused_and_scheduled_live_deployments_only(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 1, group="fleet")
    principal = admin(api)
    statuses = ("active", "paused", "scheduled", "aborted", "finished")
    made = {}
    for status in statuses:
        made[status] = await rollout.create(
            api.runtime, principal, request(name=status, target={"group": "fleet", "live": True})
        )
    not_live = await rollout.create(api.runtime, principal, request(name="static", target={"group": "fleet"}))
    async with api.runtime.database.transaction() as session:
        for status, deployment in made.items():
            row = await session.get(Deployment, deployment.id)
            assert row is not None
            row.status = status
    await add_devices(api.runtime.database, 2, group="fleet")
    stats = await live.sync_live_deployments(api.runtime)
    assert (stats.deployments, stats.added) == (3, 6)
    sizes = {status: len(await rows(api, deployment.id)) for status, deployment in made.items()}
    assert sizes == {"active": 3, "paused": 3, "scheduled": 3, "aborted": 1, "finished": 1}
    assert len(await rows(api, not_live.id)) == 1


async def test_two_passes_at_once_add_each_device_once(api: Api) -> None:
    """Two replicas (or the job and a caller) syncing the same deployment together: on PostgreSQL
    they run on separate connections and take turns on the deployment's row lock."""
    await a_release(api)
    await add_devices(api.runtime.database, 1, group="fleet")
    deployment = await rollout.create(
        api.runtime, admin(api), request(target={"group": "fleet", "live": True})
    )
    await add_devices(api.runtime.database, 60, group="fleet")
    results = await asyncio.gather(*(live.sync_live_deployment(api.runtime, deployment.id) for _ in range(4)))
    assert sum(result.added for result in results) == 60
    async with api.runtime.database.session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(DeploymentDevice)
            .join(Deployment, Deployment.number == DeploymentDevice.deployment_number)
            .where(Deployment.id == deployment.id)
        )
    assert count == 61
    async with api.runtime.database.session() as session:
        assert await progress.counts_of(session, deployment.id) == await progress.recount(
            session, deployment.id
        )


async def test_a_live_target_needs_devices_deploy_on_the_group_itself(api: Api, headers: Headers) -> None:
    await a_release(api)
    for group in ("plant-a", "plant-b"):
        await api.client.post("/api/v1/device-groups", json={"name": group}, headers=headers)
    device = await accepted_device(api, headers)
    await api.client.post(
        "/api/v1/device-groups/plant-a/devices", json={"devices": [device.device_id]}, headers=headers
    )
    # Today every device of "rpis" is in plant-a: enough for a one-off deployment, not a live one.
    await api.client.post(
        "/api/v1/device-groups",
        json={"name": "rpis", "filter": 'device_type == "rpi4"'},
        headers=headers,
    )
    user = await api.create_user(
        "dm", "tulip-orbit-canyon-7", roles=[{"role": "deployments-manager", "device_groups": ["plant-a"]}]
    )
    body = {"name": "x", "release": "fw", "version": "2.0"}
    refused = await api.client.post(
        "/api/v1/deployments", json={**body, "target": {"group": "rpis", "live": True}}, headers=user
    )
    assert refused.status_code == 403
    assert refused.json()["groups"] == ["rpis"]
    assert "rpis" in refused.json()["detail"]
    one_off = await api.client.post(
        "/api/v1/deployments", json={**body, "target": {"group": "rpis"}}, headers=user
    )
    assert one_off.status_code == 201, one_off.text
    mine = await api.client.post(
        "/api/v1/deployments", json={**body, "target": {"group": "plant-a", "live": True}}, headers=user
    )
    assert mine.status_code == 201, mine.text
    unscoped = await api.client.post(
        "/api/v1/deployments", json={**body, "target": {"group": "rpis", "live": True}}, headers=headers
    )
    assert unscoped.status_code == 201, unscoped.text
    # Finishing follows the same rule, and names no group the user does not see (issue 18, finding 4).
    not_theirs = await api.client.post(f"/api/v1/deployments/{unscoped.json()['id']}/finish", headers=user)
    assert (not_theirs.status_code, not_theirs.json()["groups"]) == (403, [])
    assert "rpis" not in not_theirs.json()["detail"]
    theirs = await api.client.post(f"/api/v1/deployments/{mine.json()['id']}/finish", headers=user)
    assert theirs.status_code == 200, theirs.text
    with pytest.raises(ProblemError) as service_level:
        await rollout.create(
            api.runtime, scoped(["plant-b"]), request(target={"group": "plant-a", "live": True})
        )
    assert service_level.value.status == 403

"""Rollouts end to end through the real device API (devices that speak the protocol): phases
advance, the failure threshold pauses, abort stops the rest, the older deployment comes first,
webhooks are queued, reports are idempotent and ordered."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from fleetkeeper.audit.service import SYSTEM
from fleetkeeper.deployments import clock
from fleetkeeper.deployments.webhook_models import WebhookDelivery
from fleetkeeper.deployments.webhooks import create_webhook
from tests.conftest import Api
from tests.helpers.deployments import current, deploy, director_targets, fleet_of, send
from tests.helpers.devices import accepted_device, device_client
from tests.helpers.releases import a_release


async def test_phases_advance_and_the_deployment_finishes(api: Api) -> None:
    await a_release(api)
    first, *rest = await fleet_of(api, 3)
    await create_webhook(
        api.runtime.database,
        SYSTEM,
        url="http://127.0.0.1:9/hook",
        events=["deployment.finished"],
        allow_private=True,
    )
    deployment = await deploy(api, phases=[{"size": {"count": 1}}, {"size": {"percent": 100}}])
    assert deployment["progress"] == {"1": {"pending": 1}, "2": {"pending": 2}}
    assert await director_targets(api, first) == ["fw/2.0/fw.bin"]
    assert await director_targets(api, rest[0]) == [], "phase 2 has not opened"
    assert await current(api, rest[0]) is None
    assert (await send(api, first, deployment["id"], "downloading", 1)).status_code == 200
    assert (await send(api, first, deployment["id"], "success", 2)).status_code == 200
    again = await send(api, first, deployment["id"], "success", 2)
    assert again.status_code == 200, "the same report twice changes nothing"
    older = await send(api, first, deployment["id"], "installing", 1)
    assert older.status_code == 409
    assert older.json()["code"] == "out_of_order"
    assert await current(api, rest[0]) == deployment["id"], "phase 1 succeeded: phase 2 opened"
    assert await director_targets(api, rest[1]) == ["fw/2.0/fw.bin"]
    for device in rest:
        assert (await send(api, device, deployment["id"], "success", 1)).status_code == 200
    shown = (
        await api.client.get(f"/api/v1/deployments/{deployment['id']}", headers=await api.admin_headers())
    ).json()
    assert shown["status"] == "finished"
    assert shown["progress"] == {"1": {"success": 1}, "2": {"success": 2}}
    async with api.runtime.database.session() as session:
        events = (await session.scalars(select(WebhookDelivery.event))).all()
    assert events == ["deployment.finished"]


async def test_the_failure_threshold_pauses_and_notifies(api: Api) -> None:
    await a_release(api)
    devices = await fleet_of(api, 3)
    await create_webhook(
        api.runtime.database,
        SYSTEM,
        url="http://127.0.0.1:9/hook",
        events=["deployment.paused", "deployment.failure_threshold_reached"],
        allow_private=True,
    )
    deployment = await deploy(api, failure_threshold={"overall": {"count": 1}})
    response = await send(
        api, devices[0], deployment["id"], "failure", 1, detail="health check failed\nexit 3"
    )
    assert response.json()["status"] == "failure"
    shown = (
        await api.client.get(f"/api/v1/deployments/{deployment['id']}", headers=await api.admin_headers())
    ).json()
    assert shown["status"] == "paused"
    assert "failure threshold" in shown["pause_reason"]
    assert await current(api, devices[1]) is None, "a paused deployment sends nobody new"
    async with api.runtime.database.session() as session:
        events = sorted((await session.scalars(select(WebhookDelivery.event))).all())
    assert events == ["deployment.failure_threshold_reached", "deployment.paused"]
    resumed = await api.client.post(
        f"/api/v1/deployments/{deployment['id']}/resume", headers=await api.admin_headers()
    )
    assert resumed.json()["status"] == "active"
    # Resuming accepts the failures so far: the next success does not pause again, a new failure does.
    await send(api, devices[1], deployment["id"], "success", 1)
    shown = (
        await api.client.get(f"/api/v1/deployments/{deployment['id']}", headers=await api.admin_headers())
    ).json()
    assert shown["status"] == "active"
    await send(api, devices[2], deployment["id"], "failure", 1, detail="exit 1")
    shown = (
        await api.client.get(f"/api/v1/deployments/{deployment['id']}", headers=await api.admin_headers())
    ).json()
    assert shown["status"] == "paused"
    assert "2 overall" in shown["pause_reason"]


async def test_abort_stops_the_rest_and_keeps_what_is_done(api: Api) -> None:
    await a_release(api)
    done, waiting = await fleet_of(api, 2)
    deployment = await deploy(api)
    assert (await send(api, done, deployment["id"], "success", 1)).status_code == 200
    aborted = await api.client.post(
        f"/api/v1/deployments/{deployment['id']}/abort", headers=await api.admin_headers()
    )
    assert aborted.json()["progress"] == {"1": {"success": 1, "aborted": 1}}
    late = await send(api, waiting, deployment["id"], "installing", 1)
    assert late.status_code == 409
    assert late.json()["code"] == "deployment_aborted"
    assert await director_targets(api, waiting) == []


async def test_the_older_deployment_comes_first(api: Api) -> None:
    await a_release(api)
    (device,) = await fleet_of(api, 1)
    older = await deploy(api, name="first")
    newer = await deploy(api, name="second")
    assert await current(api, device) == older["id"]
    await send(api, device, older["id"], "success", 1)
    assert await current(api, device) == newer["id"]


async def test_reports_for_another_device_or_unknown_status_are_refused(api: Api) -> None:
    await a_release(api)
    member, outsider = await fleet_of(api, 1), await accepted_device(api)
    deployment = await deploy(api)
    other = await send(api, outsider, deployment["id"], "success", 1)
    assert other.status_code == 404
    assert other.json()["code"] == "not_in_deployment"
    assert (await send(api, member[0], deployment["id"], "exploded", 1)).json()["code"] == "invalid_status"


async def test_a_user_scoped_to_one_group_cannot_deploy_beyond_it(api: Api) -> None:
    await a_release(api)
    plant_a = await fleet_of(api, 1, group="plant-a")
    plant_b = await fleet_of(api, 1, group="plant-b")
    admin = await api.admin_headers()
    await api.client.post(
        "/api/v1/device-groups", json={"name": "everything", "filter": 'status == "accepted"'}, headers=admin
    )
    user = await api.create_user(
        "dm", "tulip-orbit-canyon-7", roles=[{"role": "deployments-manager", "device_groups": ["plant-a"]}]
    )
    payload = {"name": "x", "release": "fw", "version": "2.0", "target": {"group": "everything"}}
    refused = await api.client.post("/api/v1/deployments", json=payload, headers=user)
    # "everything" is not a group of theirs, and reaches beyond plant-a: as if it did not exist.
    assert (refused.status_code, refused.json()["code"]) == (404, "group_not_found")
    devices = {"devices": [plant_b[0].device_id, plant_a[0].device_id]}
    refused = await api.client.post("/api/v1/deployments", json={**payload, "target": devices}, headers=user)
    assert (refused.status_code, refused.json()["code"]) == (404, "device_not_found")
    allowed = await api.client.post(
        "/api/v1/deployments", json={**payload, "target": {"group": "plant-a"}}, headers=user
    )
    assert allowed.status_code == 201


async def test_the_clock_moves_a_scheduled_start(api: Api, monkeypatch: Any) -> None:
    from datetime import timedelta

    await a_release(api)
    (device,) = await fleet_of(api, 1)
    start = clock.now() + timedelta(hours=2)
    deployment = await deploy(api, start_at=start.isoformat())
    assert await current(api, device) is None
    assert deployment["status"] == "scheduled"
    monkeypatch.setattr(clock, "now", lambda: start + timedelta(minutes=1))
    assert await current(api, device) == deployment["id"], "its start time has come"


async def test_windows_say_when_a_device_may_install(api: Api, monkeypatch: Any) -> None:
    from datetime import UTC, datetime

    await a_release(api)
    (device,) = await fleet_of(api, 1)
    await deploy(api, windows=[{"cron": "0 2 * * *", "duration_minutes": 60, "timezone": "UTC"}])
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    async with device_client(api.runtime, device.certificate) as client:
        closed = (await client.get("/device/v1/deployments/current")).json()
    assert closed["install_allowed"] is False
    assert closed["next_window"].startswith("2026-11-24T02:00")
    assert await director_targets(api, device) == ["fw/2.0/fw.bin"], "it still downloads"
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 11, 24, 2, 30, tzinfo=UTC))
    async with device_client(api.runtime, device.certificate) as client:
        assert (await client.get("/device/v1/deployments/current")).json()["install_allowed"] is True
    deferred = await send(
        api,
        device,
        (await api.client.get("/api/v1/deployments", headers=await api.admin_headers())).json()[0]["id"],
        "deferred",
        1,
        "outside window",
    )
    assert deferred.json()["status"] == "deferred"


async def test_webhook_routes(api: Api) -> None:
    admin = await api.admin_headers()
    body = {"url": "http://127.0.0.1:9/h", "events": ["deployment.finished"]}
    private = await api.client.post("/api/v1/webhooks", json=body, headers=admin)
    assert private.status_code == 422, "loopback and private targets are refused by default"
    assert private.json()["code"] == "invalid_webhook"
    api.runtime.settings.webhook_allow_private_targets = True
    created = await api.client.post("/api/v1/webhooks", json=body, headers=admin)
    assert created.status_code == 201
    secret = created.json()["secret"]
    listed = await api.client.get("/api/v1/webhooks", headers=admin)
    assert secret not in listed.text
    assert [w["id"] for w in listed.json()] == [created.json()["webhook"]["id"]]
    deleted = await api.client.delete(f"/api/v1/webhooks/{created.json()['webhook']['id']}", headers=admin)
    assert deleted.status_code == 204

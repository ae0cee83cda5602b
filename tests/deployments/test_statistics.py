"""Progress counters, statistics, device lists and history, the download cap and forced reinstall,
through the real management and device APIs (devices that speak the protocol)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.deployments import clock, progress, visibility
from fleetkeeper.deployments.director import assignment
from fleetkeeper.deployments.statistics import fleet_health
from tests.conftest import Api
from tests.helpers.deployments import deploy, devices_of, director_targets, fleet_of, send
from tests.helpers.devices import FakeDevice, device_client
from tests.helpers.releases import a_release


@pytest.fixture
async def api(api: Api) -> Api:
    """The shared `api`, signing the administrator in once per test: these tests make more
    requests than the per-account sign-in limit allows sign-ins in a minute."""
    headers = await api.admin_headers()

    async def signed_in() -> dict[str, str]:
        return headers

    api.admin_headers = signed_in  # type: ignore[method-assign]
    return api


async def counters_and_recount(api: Api, deployment_id: str) -> tuple[Any, Any]:
    async with api.runtime.database.session() as session:
        return await progress.counts_of(session, deployment_id), await progress.recount(
            session, deployment_id
        )


async def shown(api: Api, deployment_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/api/v1/deployments/{deployment_id}", headers=await api.admin_headers())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def current(api: Api, device: FakeDevice) -> dict[str, Any] | None:
    async with device_client(api.runtime, device.certificate) as client:
        response = await client.get("/device/v1/deployments/current")
    if response.status_code == 404:
        assert response.json()["code"] == "no_deployment"
        return None
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def report_inventory(api: Api, device: FakeDevice, inventory: dict[str, Any]) -> Any:
    async with device_client(api.runtime, device.certificate) as client:
        return await client.put("/device/v1/inventory", json=inventory)


async def test_counters_equal_a_recount_after_a_mixed_run(api: Api) -> None:
    await a_release(api)
    devices = await fleet_of(api, 7)
    deployment = await deploy(api, max_retries=1, phases=[{"size": {"count": 5}}, {"size": {"percent": 100}}])
    deployment_id = deployment["id"]
    ok, retried, failed_twice, refused, busy, *_second_phase = devices
    assert (await send(api, ok, deployment_id, "downloading", 1)).status_code == 200
    assert (await send(api, ok, deployment_id, "success", 2)).status_code == 200
    first_try = await send(api, retried, deployment_id, "failure", 1, detail="exit 3")
    assert first_try.json()["status"] == "pending", "one retry left"
    assert (await send(api, retried, deployment_id, "success", 2)).status_code == 200
    for seq in (1, 2):
        await send(api, failed_twice, deployment_id, "failure", seq)
    await send(api, refused, deployment_id, "refused", 1, detail="bad signature")
    await send(api, busy, deployment_id, "downloading", 1)
    await send(api, busy, deployment_id, "downloading", 1)  # the same report again changes nothing
    counts, recounted = await counters_and_recount(api, deployment_id)
    assert counts == recounted
    assert counts == {
        0: {"success": 2, "failure": 1, "refused": 1, "downloading": 1},
        1: {"pending": 2},
    }
    aborted = await api.client.post(
        f"/api/v1/deployments/{deployment_id}/abort", headers=await api.admin_headers()
    )
    assert aborted.status_code == 200
    counts, recounted = await counters_and_recount(api, deployment_id)
    assert counts == recounted
    assert counts == {0: {"success": 2, "failure": 1, "refused": 1, "aborted": 1}, 1: {"aborted": 2}}


async def test_statistics_per_phase_and_overall(api: Api) -> None:
    await a_release(api)
    first, second, third, fourth = await fleet_of(api, 4)
    deployment = await deploy(
        api, phases=[{"size": {"count": 2}}, {"size": {"percent": 100}}], max_downloading=3
    )
    await send(api, first, deployment["id"], "success", 1)
    await send(api, second, deployment["id"], "installing", 1)
    stats = await shown(api, deployment["id"])
    assert stats["status"] == "active"
    assert stats["current_phase"] == 1
    assert stats["started_at"] == stats["created_at"]
    assert stats["finished_at"] is None
    assert stats["max_downloading"] == 3
    assert stats["statistics"]["overall"] == {
        "counts": {"installing": 1, "pending": 2, "success": 1},
        "total": 4,
        "succeeded": 1,
        "failed": 0,
        "in_progress": 1,
        "pending": 2,
        "aborted": 0,
        "percent_done": 25.0,
    }
    listed = (await api.client.get("/api/v1/deployments", headers=await api.admin_headers())).json()
    assert listed[0]["statistics"] == stats["statistics"]
    first_phase, second_phase = stats["statistics"]["phases"]
    assert (first_phase["phase"], first_phase["open"], first_phase["percent_done"]) == (1, True, 50.0)
    assert (second_phase["phase"], second_phase["open"], second_phase["total"]) == (2, False, 2)
    await send(api, second, deployment["id"], "failure", 2, detail="disk full")
    await send(api, third, deployment["id"], "success", 1)
    await send(api, fourth, deployment["id"], "success", 1)
    stats = await shown(api, deployment["id"])
    assert stats["status"] == "finished"
    assert stats["finished_at"] is not None
    assert stats["statistics"]["overall"]["percent_done"] == 100.0
    assert stats["statistics"]["overall"]["failed"] == 1
    assert stats["statistics"]["phases"][1]["succeeded"] == 2


async def test_a_scheduled_deployment_has_not_started(api: Api) -> None:
    await a_release(api)
    await fleet_of(api, 1)
    start = clock.now() + timedelta(hours=1)
    deployment = await deploy(api, start_at=start.isoformat())
    stats = await shown(api, deployment["id"])
    assert stats["start_at"] is not None
    assert stats["started_at"] is None


async def test_the_devices_list_filters_and_pages(api: Api) -> None:
    await a_release(api)
    devices = await fleet_of(api, 5)
    deployment = await deploy(api, phases=[{"size": {"count": 2}}, {"size": {"percent": 100}}])
    await send(api, devices[0], deployment["id"], "failure", 1, detail="log tail")
    admin = await api.admin_headers()
    url = f"/api/v1/deployments/{deployment['id']}/devices"
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get(url, params=params, headers=admin)).json()
        seen += [item["device_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [devices[0].device_id] + [device.device_id for device in devices[1:]], (
        "by status (failure before pending), then device id"
    )
    failed = (await api.client.get(url, params={"status": "failure"}, headers=admin)).json()
    assert [(i["device_id"], i["attempts"], i["detail"], i["phase"]) for i in failed["items"]] == [
        (devices[0].device_id, 1, "log tail", 1)
    ]
    assert failed["items"][0]["updated_at"] is not None
    second_phase = (await api.client.get(url, params={"phase": 2, "status": "pending"}, headers=admin)).json()
    assert [i["device_id"] for i in second_phase["items"]] == [d.device_id for d in devices[2:]]
    for params, code, status in [
        ({"status": "exploded"}, "invalid_status", 422),
        ({"phase": 3}, "invalid_phase", 422),
        ({"cursor": "not-a-cursor"}, "invalid_cursor", 400),
    ]:
        refused = await api.client.get(url, params=params, headers=admin)
        assert (refused.status_code, refused.json()["code"]) == (status, code)
    missing = await api.client.get("/api/v1/deployments/dep_nope/devices", headers=admin)
    assert missing.json()["code"] == "deployment_not_found"


async def test_the_devices_list_pages_across_statuses(api: Api) -> None:
    """Statuses before and after `pending` (whose rows the status index leaves out, so that they
    are read through the key): pages in status then device id order, across the boundaries."""
    await a_release(api)
    devices = await fleet_of(api, 6)
    deployment = await deploy(api)
    for seq, (device, status) in enumerate(
        [(devices[5], "downloading"), (devices[1], "downloading"), (devices[3], "success")], start=1
    ):
        assert (await send(api, device, deployment["id"], status, seq)).status_code == 200
    admin = await api.admin_headers()
    url = f"/api/v1/deployments/{deployment['id']}/devices"

    async def walk(**filters: Any) -> list[list[tuple[str, str]]]:
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 2, **filters, **({"cursor": cursor} if cursor else {})}
            page = (await api.client.get(url, params=params, headers=admin)).json()
            pages.append([(item["status"], item["device_id"]) for item in page["items"]])
            if (cursor := page["next_cursor"]) is None:
                return pages

    ids = [device.device_id for device in devices]
    assert await walk() == [
        [("downloading", ids[1]), ("downloading", ids[5])],
        [("pending", ids[0]), ("pending", ids[2])],
        [("pending", ids[4]), ("success", ids[3])],
    ]
    assert await walk(status="pending") == [[("pending", ids[0]), ("pending", ids[2])], [("pending", ids[4])]]
    assert await walk(status="success") == [[("success", ids[3])]]
    assert await walk(status="failure") == [[]]


async def test_history_of_a_device_and_its_deployments(api: Api) -> None:
    await a_release(api)
    (device,) = await fleet_of(api, 1, group="plant-a")
    (outsider,) = await fleet_of(api, 1, group="plant-b")
    older = await deploy(api, name="first", target={"group": "plant-a"})
    newer = await deploy(api, name="second", target={"group": "plant-a"})
    await send(api, device, older["id"], "downloading", 1)
    await send(api, device, older["id"], "installing", 2)
    await send(api, device, older["id"], "success", 3, detail="installed in 4 s")
    admin = await api.admin_headers()
    history = (
        await api.client.get(f"/api/v1/deployments/{older['id']}/devices/{device.device_id}", headers=admin)
    ).json()
    assert history["status"] == "success"
    assert [(e["seq"], e["status"], e["detail"]) for e in history["events"]] == [
        (1, "downloading", None),
        (2, "installing", None),
        (3, "success", "installed in 4 s"),
    ]
    listed = (await api.client.get(f"/api/v1/devices/{device.device_id}/deployments", headers=admin)).json()
    assert [(i["deployment_id"], i["device"]["status"]) for i in listed["items"]] == [
        (newer["id"], "pending"),
        (older["id"], "success"),
    ], "newest first, with the device's status in each"
    paged = (
        await api.client.get(
            f"/api/v1/devices/{device.device_id}/deployments", params={"limit": 1}, headers=admin
        )
    ).json()
    rest = (
        await api.client.get(
            f"/api/v1/devices/{device.device_id}/deployments",
            params={"limit": 1, "cursor": paged["next_cursor"]},
            headers=admin,
        )
    ).json()
    assert [i["deployment_id"] for i in paged["items"] + rest["items"]] == [newer["id"], older["id"]]
    assert rest["next_cursor"] is None
    not_in = await api.client.get(
        f"/api/v1/deployments/{older['id']}/devices/{outsider.device_id}", headers=admin
    )
    assert (not_in.status_code, not_in.json()["code"]) == (404, "not_in_deployment")

    reader = await api.create_user(
        "reader", "tulip-orbit-canyon-7", roles=[{"role": "read-only", "device_groups": ["plant-b"]}]
    )
    hidden = await api.client.get(f"/api/v1/devices/{device.device_id}/deployments", headers=reader)
    assert (hidden.status_code, hidden.json()["code"]) == (404, "device_not_found"), "out of scope"
    hidden = await api.client.get(
        f"/api/v1/deployments/{older['id']}/devices/{device.device_id}", headers=reader
    )
    assert (hidden.status_code, hidden.json()["code"]) == (404, "device_not_found")
    in_scope = await api.client.get(f"/api/v1/devices/{outsider.device_id}/deployments", headers=reader)
    assert in_scope.status_code == 200
    assert in_scope.json()["items"] == []
    # A deployment of none of the reader's devices is unknown to them (tests/deployments/test_visibility.py).
    scoped_list = await api.client.get(f"/api/v1/deployments/{older['id']}/devices", headers=reader)
    assert (scoped_list.status_code, scoped_list.json()["code"]) == (404, "deployment_not_found")


async def test_the_download_cap_queues_devices_until_a_slot_frees(api: Api) -> None:
    await a_release(api)
    devices = await fleet_of(api, 5)
    deployment = await deploy(api, max_downloading=2)
    deployment_id = deployment["id"]
    downloading = []
    for device in devices[:2]:
        assert await director_targets(api, device) == ["fw/2.0/fw.bin"]
        assert (await send(api, device, deployment_id, "downloading", 1)).status_code == 200
        downloading.append(device)
    for device in devices[2:]:
        assert await director_targets(api, device) == [], "both slots are taken"
        found = await current(api, device)
        assert found is not None
        assert (found["deployment_id"], found["queued"]) == (deployment_id, True)
    assert (await current(api, downloading[0]) or {})["queued"] is False, "a device holding a slot keeps it"
    # One finishes: its slot goes to the next device that checks in.
    await send(api, downloading[0], deployment_id, "downloaded", 2)
    assert await director_targets(api, devices[2]) == ["fw/2.0/fw.bin"]
    await send(api, devices[2], deployment_id, "downloading", 1)
    assert await director_targets(api, devices[3]) == []
    # A device silent in downloading for longer than the slot is held no longer holds it.
    later = clock.now() + assignment.DOWNLOAD_SLOT_HELD_FOR + timedelta(minutes=1)
    original = clock.now
    try:
        clock.now = lambda: later
        assert await director_targets(api, devices[3]) == ["fw/2.0/fw.bin"]
        assert (await current(api, devices[4]) or {})["queued"] is False
    finally:
        clock.now = original


async def test_a_device_that_runs_the_release_is_not_asked_again(api: Api) -> None:
    await a_release(api)
    runs_it, other_version, fresh, joins_later = await fleet_of(api, 4)
    assert (
        await report_inventory(api, runs_it, {"release": {"name": "fw", "version": "2.0"}})
    ).status_code == 204
    await report_inventory(api, other_version, {"release": {"name": "fw", "version": "1.9"}})
    deployment = await deploy(api)
    found = await devices_of(api, deployment["id"])
    statuses = {device_id: status for device_id, (_phase, status) in found.items()}
    assert statuses[runs_it.device_id] == "already_installed", "set at creation"
    assert statuses[other_version.device_id] == statuses[fresh.device_id] == "pending"
    assert deployment["progress"] == {"1": {"already_installed": 1, "pending": 3}}
    assert await current(api, runs_it) is None
    # A device that installed it by other means since creation is found at its check-in.
    await report_inventory(api, joins_later, {"release": {"name": "fw", "version": "2.0"}})
    assert await director_targets(api, joins_later) == []
    history = (
        await api.client.get(
            f"/api/v1/deployments/{deployment['id']}/devices/{joins_later.device_id}",
            headers=await api.admin_headers(),
        )
    ).json()
    assert history["status"] == "already_installed"
    counts, recounted = await counters_and_recount(api, deployment["id"])
    assert counts == recounted == {0: {"already_installed": 2, "pending": 2}}
    assert await director_targets(api, fresh) == ["fw/2.0/fw.bin"]
    assert (await current(api, fresh) or {})["force"] is False
    async with api.runtime.database.session() as session:
        actions = set(
            (
                await session.scalars(select(AuditRecord.action).where(AuditRecord.action.like("%already%")))
            ).all()
        )
    assert actions == {"deployment.already_installed", "deployment.device_already_installed"}


async def test_every_device_running_it_already_finishes_the_deployment(api: Api) -> None:
    await a_release(api)
    devices = await fleet_of(api, 2)
    for device in devices:
        await report_inventory(api, device, {"release": {"name": "fw", "version": "2.0"}})
    deployment = await deploy(api, phases=[{"size": {"count": 1}}, {"size": {"percent": 100}}])
    assert deployment["progress"] == {"1": {"already_installed": 1}, "2": {"already_installed": 1}}
    assert (await shown(api, deployment["id"]))["status"] == "finished"


async def test_force_reinstalls_a_release_already_running(api: Api) -> None:
    await a_release(api)
    (device,) = await fleet_of(api, 1)
    await report_inventory(api, device, {"release": {"name": "fw", "version": "2.0"}})
    deployment = await deploy(api, force=True)
    assert deployment["progress"] == {"1": {"pending": 1}}
    assert deployment["force"] is True
    assert await director_targets(api, device) == ["fw/2.0/fw.bin"], "asked anyway"
    found = await current(api, device)
    assert found is not None
    assert (found["deployment_id"], found["force"], found["queued"]) == (deployment["id"], True, False)


async def test_the_release_inventory_key_is_checked(api: Api) -> None:
    (device,) = await fleet_of(api, 1)
    agent_sends = {"release": {"name": "fw", "version": "2.0", "release_counter": 7}}
    assert (await report_inventory(api, device, agent_sends)).status_code == 204
    for bad in [
        "fw 2.0",
        {"name": "fw"},
        {"name": "fw", "version": 2},
        {"name": "", "version": "2"},
        {"name": "fw", "version": "2", "release_counter": "7"},
    ]:
        refused = await report_inventory(api, device, {"release": bad})
        assert (refused.status_code, refused.json()["code"]) == (422, "invalid_inventory"), bad


async def test_fleet_health_judges_each_device_by_its_newest_deployment(api: Api) -> None:
    from fleetkeeper.access.permissions import GrantSet
    from fleetkeeper.access.service import Principal
    from fleetkeeper.devices import service as devices
    from tests.helpers.deployments import admin

    elsewhere = GrantSet.from_json([{"permission": "devices:read", "scopes": ["elsewhere"]}])

    await a_release(api)
    done, failed, _waiting = await fleet_of(api, 3)
    deployment_id = (await deploy(api))["id"]
    assert (await send(api, done, deployment_id, "success", 1)).status_code == 200
    assert (await send(api, failed, deployment_id, "failure", 1, detail="rolled back")).status_code == 200
    async with api.runtime.database.session() as session:
        health = await fleet_health(session, admin(api))
        outside = await fleet_health(
            session, Principal(user_id="usr_x", username="x", grants=elsewhere, method="password")
        )
        under_way = await visibility.under_way(session, admin(api))
        counts = await devices.status_counts(session, admin(api))
    assert (health.failing, health.outdated) == (1, 2)  # the failed and the waiting device
    assert (outside.failing, outside.outdated) == (0, 0)  # devices the caller cannot read
    [shown] = under_way
    shown_deployment, statistics = shown.deployment, shown.statistics
    assert shown_deployment.id == deployment_id
    assert statistics is not None
    assert [phase.total for phase in statistics.phases] == [3]
    assert (statistics.overall.succeeded, statistics.overall.failed) == (1, 1)
    # Online: seen over mTLS lately; the waiting device has not spoken since its enrollment.
    assert (counts.accepted, counts.online, counts.pending) == (3, 2, 0)

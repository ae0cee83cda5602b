"""A deployment's devices as chunks of ids: written in id order within their phases, each device
found in its own deployment's chunk, shown like a row until its first report writes one, and
written out as rows when the migration is undone."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import insert, select, text

from fleetkeeper.core.migrations import downgrade, upgrade_async
from fleetkeeper.deployments import chunks, progress, reports
from fleetkeeper.deployments.models import Deployment, DeploymentChunk
from fleetkeeper.deployments.rollout import create
from tests.conftest import BACKENDS, Api, FreshDatabaseUrl
from tests.deployments.test_migration_numbers import ROWS, rows_by_deployment_id, upgraded_from_0012
from tests.helpers.deployments import add_devices, admin, current, deploy, devices_of, fleet_of, request, send
from tests.helpers.releases import a_release


async def test_chunks_cut_the_target_in_id_order_within_each_phase(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunks, "CHUNK_SIZE", 4)
    await a_release(api)
    ids = sorted(await add_devices(api.runtime.database, 25, group="fleet"))
    outsiders = await add_devices(api.runtime.database, 7, group="elsewhere")
    phases = [{"size": {"count": 3}}, {"size": {"percent": 40}}, {"size": {"percent": 100}}]
    deployment = await create(api.runtime, admin(api), request(phases=phases))
    async with api.runtime.database.session() as session:
        written = (
            await session.scalars(
                select(DeploymentChunk)
                .where(DeploymentChunk.deployment_number == deployment.number)
                .order_by(DeploymentChunk.first_device_id)
            )
        ).all()
        found = {device_id: await chunks.phase_of(session, deployment.number, device_id) for device_id in ids}
        outside = [await chunks.phase_of(session, deployment.number, device_id) for device_id in outsiders]
    # Phases of 3, 10 and 12 devices: chunks of at most 4 that never span two phases.
    assert [(chunk.phase, len(chunk.device_ids)) for chunk in written] == [
        (0, 3),
        (1, 4),
        (1, 4),
        (1, 2),
        (2, 4),
        (2, 4),
        (2, 4),
    ]
    in_order = [device_id for chunk in written for device_id in sorted(chunk.device_ids)]
    assert in_order == ids
    for chunk in written:
        assert (chunk.first_device_id, chunk.last_device_id) == (min(chunk.device_ids), max(chunk.device_ids))
    assert found == {
        device_id: 0 if rank < 3 else 1 if rank < 13 else 2 for rank, device_id in enumerate(ids)
    }
    assert outside == [None] * 7


async def test_the_list_sorts_a_chunks_ids_whatever_their_order_in_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunks, "CHUNK_SIZE", 4)
    await a_release(api)
    ids = sorted(await add_devices(api.runtime.database, 10, group="fleet"))
    deployment = await create(api.runtime, admin(api), request())
    async with api.runtime.database.transaction() as session:
        for chunk in await session.scalars(select(DeploymentChunk)):
            chunk.device_ids = list(reversed(chunk.device_ids))
    listed = await devices_of(api, deployment.id, limit=3)
    assert list(listed) == ids


async def test_no_already_installed_mark_after_an_abort(api: Api) -> None:
    """A check-in that read an open deployment, then lost the race to an abort: its mark writes
    nothing, and the counters still match the devices."""
    await a_release(api)
    (device,) = await fleet_of(api, 1)
    deployment = await deploy(api)
    aborted = await api.client.post(
        f"/api/v1/deployments/{deployment['id']}/abort", headers=await api.admin_headers()
    )
    assert aborted.status_code == 200
    async with api.runtime.database.session() as session:
        await reports.mark_already_installed(session, deployment["id"], device.device_id or "", 0)
    async with api.runtime.database.session() as session:
        counts = await progress.counts_of(session, deployment["id"])
        assert counts == await progress.recount(session, deployment["id"]) == {0: {"aborted": 1}}


async def test_a_device_is_looked_for_in_its_deployments_own_chunks(api: Api) -> None:
    """Two deployments whose chunks start at different devices: each device is found in the one
    that holds it, not in whichever chunk starts closest below it."""
    await a_release(api)
    first, middle, last = await fleet_of(api, 3)
    outer = await deploy(api, name="outer", target={"devices": [first.device_id, last.device_id]})
    inner = await deploy(api, name="inner", target={"devices": [middle.device_id]})
    assert await current(api, last) == outer["id"]
    assert await current(api, first) == outer["id"]
    assert await current(api, middle) == inner["id"]


async def test_untouched_devices_are_listed_with_the_rows_in_id_order(api: Api) -> None:
    await a_release(api)
    devices = await fleet_of(api, 5)
    deployment = await deploy(api, max_retries=1)
    retried = devices[1]
    failed = await send(api, retried, deployment["id"], "failure", 1, detail="disk full")
    assert failed.json()["status"] == "pending"  # tried again: a row, pending, one attempt
    headers = await api.admin_headers()
    listed: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"status": "pending", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (
            await api.client.get(
                f"/api/v1/deployments/{deployment['id']}/devices", params=params, headers=headers
            )
        ).json()
        listed += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [entry["device_id"] for entry in listed] == [device.device_id for device in devices]
    assert [entry["attempts"] for entry in listed] == [0, 1, 0, 0, 0]
    assert all(entry["phase"] == 1 and entry["status"] == "pending" for entry in listed)


async def test_an_untouched_device_has_a_history_its_deployments_and_an_abort(api: Api) -> None:
    await a_release(api)
    done, untouched = await fleet_of(api, 2)
    deployment = await deploy(api)
    headers = await api.admin_headers()
    history_url = f"/api/v1/deployments/{deployment['id']}/devices/{untouched.device_id}"

    history = (await api.client.get(history_url, headers=headers)).json()
    assert (history["status"], history["attempts"], history["last_seq"], history["events"]) == (
        "pending",
        0,
        0,
        [],
    )
    of_device = (
        await api.client.get(f"/api/v1/devices/{untouched.device_id}/deployments", headers=headers)
    ).json()
    assert [(item["deployment_id"], item["device"]["status"]) for item in of_device["items"]] == [
        (deployment["id"], "pending")
    ]

    assert (await send(api, done, deployment["id"], "success", 1)).status_code == 200
    aborted = await api.client.post(f"/api/v1/deployments/{deployment['id']}/abort", headers=headers)
    assert aborted.json()["progress"] == {"1": {"success": 1, "aborted": 1}}
    assert (await api.client.get(history_url, headers=headers)).json()["status"] == "aborted"
    listed = (
        await api.client.get(
            f"/api/v1/deployments/{deployment['id']}/devices", params={"status": "aborted"}, headers=headers
        )
    ).json()
    assert [entry["device_id"] for entry in listed["items"]] == [untouched.device_id]
    late = await send(api, untouched, deployment["id"], "downloading", 1)
    assert (late.status_code, late.json()["code"]) == (409, "deployment_aborted")
    assert (await api.client.get(history_url, headers=headers)).json()["status"] == "aborted", (
        "nothing written"
    )


@pytest.mark.parametrize("backend", BACKENDS)
async def test_undoing_the_migration_writes_a_row_for_every_chunks_device(
    backend: str, fresh_database_url: FreshDatabaseUrl
) -> None:
    url = await fresh_database_url(backend)
    async with upgraded_from_0012(url) as database:
        async with database.transaction() as session:
            number = await session.scalar(
                select(Deployment.number).where(Deployment.id == "dep_b_created_first")
            )
            # dev_2 has a row already (pending): the row stays as it is, and is not written twice.
            await session.execute(
                insert(DeploymentChunk).values(
                    deployment_number=number,
                    first_device_id="dev_2",
                    last_device_id="dev_6",
                    phase=1,
                    device_ids=["dev_2", "dev_5", "dev_6"],
                )
            )
        await asyncio.to_thread(downgrade, url, "0013")
        expected = {
            **ROWS,
            "dep_b_created_first": {
                **ROWS["dep_b_created_first"],
                "dev_5": (1, "pending", 0, 0, None),
                "dev_6": (1, "pending", 0, 0, None),
            },
        }
        assert await rows_by_deployment_id(database, "number") == expected
        async with database.session() as session:
            tables = await session.run_sync(
                lambda sync: sync.connection().dialect.has_table(sync.connection(), "deployment_chunks")
            )
        assert not tables
        await upgrade_async(url)
        assert await rows_by_deployment_id(database, "number") == expected
        async with database.session() as session:
            assert await session.scalar(text("SELECT count(*) FROM deployment_chunks")) == 0

"""Migration 0013 on a database that has deployments: numbers in creation order, every device row
kept with its phase and status, new deployments numbered after them; and back down to 0012."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from sqlalchemy import insert, text

from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.migrations import downgrade, upgrade_async
from fleetkeeper.deployments.rollout import next_number
from fleetkeeper.releases.models import Release
from tests.conftest import BACKENDS, FreshDatabaseUrl

# deployment id -> its rows as 0012 kept them: device id -> (phase, status, attempts, last_seq, detail)
ROWS = {
    "dep_b_created_first": {
        "dev_1": (0, "success", 1, 3, "installed"),
        "dev_2": (1, "pending", 0, 0, None),
        "dev_3": (1, "downloading", 0, 1, None),
    },
    "dep_a_created_second": {
        "dev_1": (0, "pending", 0, 0, None),
        "dev_4": (0, "failure", 2, 5, "log tail"),
    },
}


async def fill_at_0012(database: Database) -> None:
    created = utcnow()
    async with database.transaction() as session:
        await session.execute(
            insert(Release).values(
                id="rel_1",
                name="fw",
                version="2.0",
                release_counter=2,
                module="file",
                device_types=["rpi4"],
                depends={},
                provides={},
                target_path="fw/2.0/fw.bin",
                length=1,
                sha256="0" * 64,
                object_key="targets/fw.bin",
                sbom=None,
                sbom_sha256=None,
                targets_version=1,
                signer_keyids=[],
                uploaded_by=None,
                created_at=created,
            )
        )
        # Ids that sort the other way round from creation: numbers follow creation.
        for offset, (deployment_id, rows) in enumerate(ROWS.items()):
            await session.execute(
                text(
                    "INSERT INTO deployments (id, name, release_id, status, target, phases, "
                    "current_phase, failure_threshold, windows, max_retries, force, created_at) "
                    "VALUES (:id, 'fw', 'rel_1', 'active', '{}', '[]', 0, '{}', '[]', 0, false, :at)"
                ),
                {"id": deployment_id, "at": created + timedelta(seconds=offset)},
            )
            for device_id, (phase, status, attempts, last_seq, detail) in rows.items():
                await session.execute(
                    text(
                        "INSERT INTO deployment_devices (deployment_id, device_id, phase, status, "
                        "attempts, last_seq, detail) "
                        "VALUES (:deployment, :device, :phase, :status, :attempts, :seq, :detail)"
                    ),
                    {
                        "deployment": deployment_id,
                        "device": device_id,
                        "phase": phase,
                        "status": status,
                        "attempts": attempts,
                        "seq": last_seq,
                        "detail": detail,
                    },
                )


BY_ID = (
    "SELECT deployments.id, d.device_id, d.phase, d.status, d.attempts, d.last_seq, d.detail "
    "FROM deployment_devices AS d JOIN deployments ON deployments.id = d.deployment_id"
)
BY_NUMBER = (
    "SELECT deployments.id, d.device_id, d.phase, d.status, d.attempts, d.last_seq, d.detail "
    "FROM deployment_devices AS d JOIN deployments ON deployments.number = d.deployment_number"
)


async def rows_by_deployment_id(database: Database, key: str) -> dict[str, dict[str, tuple[object, ...]]]:
    """The rows as ROWS has them; `key` is how deployment_devices names the deployment."""
    query = BY_ID if key == "id" else BY_NUMBER
    async with database.session() as session:
        found = await session.execute(text(query))
        rows: dict[str, dict[str, tuple[object, ...]]] = {}
        for deployment_id, device_id, *values in found:
            rows.setdefault(deployment_id, {})[device_id] = tuple(values)
        return rows


@asynccontextmanager
async def upgraded_from_0012(url: str) -> AsyncIterator[Database]:
    """The database at `url` filled at 0012 (ROWS), then upgraded to the newest revision."""
    await upgrade_async(url, "0012")
    database = Database(url)
    try:
        await fill_at_0012(database)
        await upgrade_async(url)
        yield database
    finally:
        await database.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_deployments_are_numbered_and_their_rows_kept(
    backend: str, fresh_database_url: FreshDatabaseUrl
) -> None:
    url = await fresh_database_url(backend)
    async with upgraded_from_0012(url) as database:
        async with database.session() as session:
            numbers = dict((await session.execute(text("SELECT id, number FROM deployments"))).all())
        assert numbers == {"dep_b_created_first": 1, "dep_a_created_second": 2}
        assert await rows_by_deployment_id(database, "number") == ROWS
        async with database.transaction() as session:
            assert await next_number(session) == 3
        await asyncio.to_thread(downgrade, url, "0012")
        assert await rows_by_deployment_id(database, "id") == ROWS
        await upgrade_async(url)
        assert await rows_by_deployment_id(database, "number") == ROWS

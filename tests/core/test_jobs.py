"""Background jobs: one replica at a time on PostgreSQL."""

from __future__ import annotations

import asyncio

from fleetkeeper.core.db import Database
from fleetkeeper.core.jobs import once_across_replicas


async def test_a_job_runs_on_one_replica_at_a_time(database: Database) -> None:
    other_replica = Database(database.url)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "ran"

    async def quick() -> str:
        return "ran too"

    try:
        first = asyncio.create_task(once_across_replicas(database, "probe-job", slow))
        await started.wait()
        second = await once_across_replicas(other_replica, "probe-job", quick)
        release.set()
        assert await first == "ran"
        if database.engine.dialect.name == "postgresql":
            assert second is None, "the other replica skipped while the lock was held"
        else:
            assert second == "ran too", "SQLite has one process: the job just runs"
        assert await once_across_replicas(other_replica, "probe-job", quick) == "ran too", (
            "the lock was released"
        )
    finally:
        await other_replica.dispose()

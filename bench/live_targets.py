"""One pass of the live-target job over a large live deployment, on PostgreSQL.

    python -m bench.live_targets [--devices 100000] [--churn 1000]

Makes a fresh PostgreSQL database (FLEETKEEPER_BENCH_POSTGRES_URL), fills N accepted devices in
the dynamic group "everything" (bench.fleet's fill), creates a live deployment to it,
then times `sync_live_deployment`: a pass with nothing to do (what every 15 s costs), a pass after
`churn` devices were accepted (joining), and a pass after `churn` devices were rejected (leaving).
The reference, in the same run, is counting the group's members with its filter. The pass holds
the deployment's row lock throughout, so its time is also how long device reports on that
deployment may wait. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from types import SimpleNamespace
from typing import Any

import asyncpg
from sqlalchemy import func, select, text

from bench.fleet import POSTGRES_URL, fill
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.principal import Principal
from fleetkeeper.core.db import Database
from fleetkeeper.core.migrations import upgrade
from fleetkeeper.deployments.live import LiveSync, sync_live_deployment
from fleetkeeper.deployments.rollout import DeploymentRequest, create
from fleetkeeper.devices.filters import compile_filter
from fleetkeeper.devices.models import Device


async def timed_pass(runtime: Any, deployment_id: str) -> tuple[float, LiveSync]:
    started = time.perf_counter()
    result = await sync_live_deployment(runtime, deployment_id)
    return time.perf_counter() - started, result


async def main(count: int, churn: int) -> dict[str, Any]:
    name = f"fk_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://{POSTGRES_URL.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        database = Database(url)
        runtime: Any = SimpleNamespace(database=database)
        try:
            await fill(database, count + churn)
            async with database.engine.begin() as connection:
                # The churn devices start pending: they join when accepted.
                await connection.execute(
                    text("UPDATE devices SET status = 'pending' WHERE id > :last"),
                    {"last": f"dev_{count - 1:08d}"},
                )
                await connection.execute(text("ANALYZE devices"))
            principal = Principal(
                user_id="usr_bench", username="bench", grants=GrantSet.everything(), method="password"
            )
            deployment = await create(
                runtime,
                principal,
                DeploymentRequest(
                    name="everything, live",
                    release_name="fw",
                    release_version="2.0",
                    target={"group": "everything", "live": True},
                ),
            )
            async with database.engine.begin() as connection:
                await connection.execute(text("ANALYZE"))
            idle_seconds, idle = await timed_pass(runtime, deployment.id)
            assert (idle.added, idle.removed) == (0, 0), idle
            async with database.engine.begin() as connection:
                await connection.execute(
                    text("UPDATE devices SET status = 'accepted' WHERE id > :last"),
                    {"last": f"dev_{count - 1:08d}"},
                )
            join_seconds, joined = await timed_pass(runtime, deployment.id)
            assert joined.added == churn, joined
            async with database.engine.begin() as connection:
                await connection.execute(
                    text("UPDATE devices SET status = 'rejected' WHERE id < :first"),
                    {"first": f"dev_{churn:08d}"},
                )
            leave_seconds, left = await timed_pass(runtime, deployment.id)
            assert left.removed == churn, left
            async with database.session() as session:
                started = time.perf_counter()
                members = await session.scalar(
                    select(func.count()).select_from(Device).where(compile_filter('status == "accepted"'))
                )
                reference_seconds = time.perf_counter() - started
            assert members == count, members
        finally:
            await database.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "benchmark": "live_target_pass",
        "backend": "postgresql",
        "devices": count,
        "churn": churn,
        "idle_pass_seconds": round(idle_seconds, 3),
        "join_pass_seconds": round(join_seconds, 3),
        "leave_pass_seconds": round(leave_seconds, 3),
        "reference": "count of the group's members with its filter, same run",
        "reference_seconds": round(reference_seconds, 3),
        "idle_ratio": round(idle_seconds / reference_seconds, 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--churn", type=int, default=1_000)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.devices, arguments.churn))))

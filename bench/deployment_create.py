"""Creating a deployment for a very large fleet, on PostgreSQL.

    python -m bench.deployment_create [--devices 1000000] [--deployments 1]

Makes a fresh PostgreSQL database and inserts N accepted devices in bulk (bench/fleet.py),
then times `deployments.rollout.create` for a dynamic group holding all of them, in three
phases — the whole request: checks, the scope and device-type queries, and the set-based
fan-out — and, as the reference in the same run, a plain `INSERT … SELECT` of the same rows
without ranking (the floor of any fan-out). With `--deployments N`, N deployments of the same
devices one after another (`later`: the second and next). Prints one JSON line.

Besides wall time, each figure comes with the CPU time the database's server processes spent on
it (`backend_cpu_seconds`, read from /proc when the server runs on this host, else null): on a
host shared with other jobs, wall time moves with their load; the server's own CPU time much less.
Parallel workers, which end with their query, are not counted (the count's scan: a few hundredths
of a second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.fleet import fill, fresh_database
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.principal import Principal
from fleetkeeper.core.db import Database
from fleetkeeper.deployments.models import DeploymentChunk
from fleetkeeper.deployments.rollout import DeploymentRequest, create


async def backend_cpu(connection: AsyncConnection) -> dict[int, float] | None:
    """CPU seconds so far of each server process connected to this database, or None when the
    server's processes are not visible here (another host, another container)."""
    # A transaction keeps the activity it read first: read again, and see connections opened since.
    await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
    pids = (
        await connection.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
    ).all()
    return _cpu_seconds(pids)


def _cpu_seconds(pids: Sequence[int]) -> dict[int, float] | None:
    seconds = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def cpu_spent(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    if before is None or after is None:
        return None
    return round(sum(spent - before.get(pid, 0.0) for pid, spent in after.items()), 2)


async def timed_create(database: Database, principal: Principal, name: str) -> tuple[float, float | None]:
    """One deployment of `fw 2.0` to the whole fleet in three phases: wall and server CPU time."""
    request = DeploymentRequest(
        name=name,
        release_name="fw",
        release_version="2.0",
        target={"group": "everything"},
        phases=[{"size": {"percent": 1}}, {"size": {"percent": 10}}, {"size": {"percent": 100}}],
    )
    async with database.engine.connect() as observer:
        cpu_before = await backend_cpu(observer)
        started = time.perf_counter()
        await create(SimpleNamespace(database=database), principal, request)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        return seconds, cpu_spent(cpu_before, await backend_cpu(observer))


async def main(count: int, deployments: int) -> dict[str, Any]:
    async with fresh_database() as url:
        database = Database(url)
        try:
            started = time.perf_counter()
            await fill(database, count)
            print(f"inserted {count} devices in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            principal = Principal(
                user_id="usr_bench", username="bench", grants=GrantSet.everything(), method="password"
            )
            runs = [await timed_create(database, principal, f"everything {n}") for n in range(deployments)]
            async with database.engine.begin() as connection:
                written = select(func.sum(func.cardinality(DeploymentChunk.device_ids)))
                fanned = await connection.scalar(written)
                await connection.execute(
                    text("CREATE TEMP TABLE reference (deployment_id text, device_id text, phase int)")
                )
                cpu_before = await backend_cpu(connection)
                started = time.perf_counter()
                await connection.execute(
                    text("INSERT INTO reference SELECT 'x', id, 0 FROM devices WHERE status = 'accepted'")
                )
                reference_seconds = time.perf_counter() - started
                reference_cpu = cpu_spent(cpu_before, await backend_cpu(connection))
            assert fanned == count * deployments, (fanned, count, deployments)
        finally:
            await database.dispose()
    create_seconds, create_cpu = runs[0]
    return {
        "benchmark": "deployment_create",
        "backend": "postgresql",
        "devices": count,
        "seconds": round(create_seconds, 2),
        "backend_cpu_seconds": create_cpu,
        # Deployments after the first, to the same devices: rows join a table that holds some.
        "later": [{"seconds": round(seconds, 2), "backend_cpu_seconds": cpu} for seconds, cpu in runs[1:]],
        "reference": "plain INSERT ... SELECT of the same rows, same run",
        "reference_seconds": round(reference_seconds, 2),
        "reference_backend_cpu_seconds": reference_cpu,
        "ratio": round(create_seconds / reference_seconds, 2),
        "cpu_ratio": round(create_cpu / reference_cpu, 2) if create_cpu and reference_cpu else None,
        "target_seconds": 2.0,
        "aws_iot_jobs_minutes": round(count / 1000, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--deployments", type=int, default=1, help="how many, one after another")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.devices, arguments.deployments))))

"""Creating a deployment for a very large fleet, on PostgreSQL.

    python -m bench.deployment_create [--devices 1000000]

Makes a fresh PostgreSQL database and inserts N accepted devices in bulk (bench/fleet.py),
then times `deployments.service.create` for a dynamic group holding all of them, in three
phases — the whole request: checks, the scope and device-type queries, and the set-based
fan-out — and, as the reference in the same run, a plain `INSERT … SELECT` of the same rows
without ranking (the floor of any fan-out). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select, text

from bench.fleet import fill, fresh_database
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.principal import Principal
from fleetkeeper.core.db import Database
from fleetkeeper.deployments.models import DeploymentDevice
from fleetkeeper.deployments.service import DeploymentRequest, create


async def main(count: int) -> dict[str, Any]:
    async with fresh_database() as url:
        database = Database(url)
        try:
            started = time.perf_counter()
            await fill(database, count)
            print(f"inserted {count} devices in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            principal = Principal(
                user_id="usr_bench", username="bench", grants=GrantSet.everything(), method="password"
            )
            request = DeploymentRequest(
                name="everything",
                release_name="fw",
                release_version="2.0",
                target={"group": "everything"},
                phases=[{"size": {"percent": 1}}, {"size": {"percent": 10}}, {"size": {"percent": 100}}],
            )
            started = time.perf_counter()
            deployment = await create(SimpleNamespace(database=database), principal, request)  # type: ignore[arg-type]
            create_seconds = time.perf_counter() - started
            async with database.engine.begin() as connection:
                fanned = await connection.scalar(
                    select(func.count())
                    .select_from(DeploymentDevice)
                    .where(DeploymentDevice.deployment_id == deployment.id)
                )
                await connection.execute(
                    text("CREATE TEMP TABLE reference (deployment_id text, device_id text, phase int)")
                )
                started = time.perf_counter()
                await connection.execute(
                    text("INSERT INTO reference SELECT 'x', id, 0 FROM devices WHERE status = 'accepted'")
                )
                reference_seconds = time.perf_counter() - started
            assert fanned == count, (fanned, count)
        finally:
            await database.dispose()
    return {
        "benchmark": "deployment_create",
        "backend": "postgresql",
        "devices": count,
        "seconds": round(create_seconds, 2),
        "reference": "plain INSERT ... SELECT of the same rows, same run",
        "reference_seconds": round(reference_seconds, 2),
        "ratio": round(create_seconds / reference_seconds, 2),
        "target_seconds": 2.0,
        "aws_iot_jobs_minutes": round(count / 1000, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1_000_000)
    print(json.dumps(asyncio.run(main(parser.parse_args().devices))))

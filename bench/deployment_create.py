"""Creating a deployment for a very large fleet, on PostgreSQL.

    python -m bench.deployment_create [--devices 1000000]

Makes a fresh PostgreSQL database (FLEETKEEPER_BENCH_POSTGRES_URL, default 127.0.0.1:5432),
migrates it, inserts N accepted devices in bulk, then times `deployments.service.create` for a
dynamic group holding all of them, in three phases — the whole request: checks, the scope and
device-type queries, and the set-based fan-out — and, as the reference in the same run, a plain
`INSERT … SELECT` of the same rows without ranking (the floor of any fan-out). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
from sqlalchemy import func, insert, select, text

from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.principal import Principal
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.migrations import upgrade
from fleetkeeper.deployments.models import DeploymentDevice
from fleetkeeper.deployments.service import DeploymentRequest, create
from fleetkeeper.devices.models import Device, DeviceGroup
from fleetkeeper.releases.models import Release

POSTGRES_URL = os.environ.get(
    "FLEETKEEPER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHUNK = 20_000


async def fill(database: Database, count: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with database.engine.begin() as connection:
        for offset in range(0, count, CHUNK):
            rows = [
                {
                    "id": f"dev_{number:08d}",
                    "status": "accepted",
                    "device_type": "rpi4",
                    "serial": None,
                    "mac": None,
                    "identity": {},
                    "public_key_pem": "",
                    "key_fingerprint": f"{number:064x}",
                    "enrolled_via": "request",
                    "created_at": start + timedelta(seconds=number),
                    "inventory": {},
                    "tags": {},
                }
                for number in range(offset, min(count, offset + CHUNK))
            ]
            await connection.execute(insert(Device), rows)
        await connection.execute(
            insert(DeviceGroup).values(
                id="grp_all",
                name="everything",
                description="",
                kind="dynamic",
                filter='status == "accepted"',
                created_at=utcnow(),
            )
        )
        await connection.execute(
            insert(Release).values(
                id="rel_bench",
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
                object_key="targets/fw/2.0/x.fw.bin",
                sbom=None,
                sbom_sha256=None,
                targets_version=2,
                signer_keyids=[],
                uploaded_by=None,
                created_at=utcnow(),
            )
        )
    async with database.engine.begin() as connection:
        await connection.execute(text("ANALYZE"))


async def main(count: int) -> dict[str, Any]:
    name = f"fk_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://{POSTGRES_URL.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
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
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
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

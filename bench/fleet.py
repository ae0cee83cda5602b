"""A large fleet in a fresh PostgreSQL database, filled in bulk: shared by the benchmarks.

`fresh_database()` creates a database on FLEETKEEPER_BENCH_POSTGRES_URL (default 127.0.0.1:5432),
migrates it and drops it afterwards; `fill()` inserts N accepted devices of type rpi4, a dynamic
group `everything` holding them all and a release `fw 2.0` for rpi4, then runs ANALYZE.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
from sqlalchemy import insert, text

from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.migrations import upgrade
from fleetkeeper.devices.models import Device, DeviceGroup
from fleetkeeper.releases.models import Release

T = TypeVar("T")

POSTGRES_URL = os.environ.get(
    "FLEETKEEPER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHUNK = 20_000
GROUP_NAME = "everything"
RELEASE = ("fw", "2.0")
RELEASE_TARGET_PATH = "fw/2.0/fw.bin"


def device_id(number: int) -> str:
    return f"dev_{number:08d}"


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The SQLAlchemy URL of a new, migrated database, dropped on the way out."""
    name = f"fk_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://{POSTGRES_URL.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def on_fresh_database(measure: Callable[[str], Awaitable[T]]) -> T:
    """`measure(url)` on a new migrated database (dropped after), in an event loop of its own."""

    async def run() -> T:
        async with fresh_database() as url:
            return await measure(url)

    return asyncio.run(run())


async def fill(database: Database, count: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with database.engine.begin() as connection:
        for offset in range(0, count, CHUNK):
            rows = [
                {
                    "id": device_id(number),
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
                name=GROUP_NAME,
                description="",
                kind="dynamic",
                filter='status == "accepted"',
                created_at=utcnow(),
            )
        )
        await connection.execute(
            insert(Release).values(
                id="rel_bench",
                name=RELEASE[0],
                version=RELEASE[1],
                release_counter=2,
                module="file",
                device_types=["rpi4"],
                depends={},
                provides={},
                target_path=RELEASE_TARGET_PATH,
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
    await analyze(database)


async def analyze(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text("ANALYZE"))

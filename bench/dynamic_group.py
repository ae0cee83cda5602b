"""How long a dynamic group's filter takes on a large fleet, compared with a plain indexed filter.

    python -m bench.dynamic_group --devices 100000 [--backend sqlite|postgresql|both] [--explain]

For each backend: a fresh database (SQLite in a temporary directory; PostgreSQL a new database on
FLEETKEEPER_BENCH_POSTGRES_URL, dropped after), migrated to head, filled with N devices and their
inventory attributes by bulk inserts, then ANALYZEd. It runs the example filter and, as the reference
in the same run, `device_type == "rpi4"` (one indexed column), each several times, checks both counts
against the generated data and prints one JSON line. `--explain` prints both query plans to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.fleet import on_fresh_database
from fleetkeeper.core.db import Database
from fleetkeeper.core.migrations import upgrade
from fleetkeeper.devices.filters import compile_filter
from fleetkeeper.devices.models import Device, DeviceAttribute

FILTER = 'device_type == "rpi4" and os.version < "12" and tag.site == "plant-3"'
REFERENCE = 'device_type == "rpi4"'

DEVICE_TYPES = ("rpi4", "rpi3", "jetson", "x86")
OS_VERSIONS = ("10", "11", "12", "13")
SITES = tuple(f"plant-{number}" for number in range(1, 6))
OPENSSL = ("3.0.11", "3.0.13", "3.1.4", "1.1.1w")
CHUNK = 5000


@dataclass(frozen=True)
class Generated:
    devices: int
    filter_matches: int
    reference_matches: int


def _devices(count: int, seed: int) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each device row with its attribute rows (7 per device, like a small inventory plus a tag)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for number in range(count):
        device_id = f"dev_{number:08d}"
        device_type = rng.choice(DEVICE_TYPES)
        kernel_major = rng.randint(4, 6)
        device: dict[str, Any] = {
            "id": device_id,
            "status": "accepted",
            "device_type": device_type,
            "serial": f"SN-{number:08d}",
            "mac": None,
            "identity": {},
            "public_key_pem": "",
            "key_fingerprint": f"{number:064x}",
            "enrolled_via": "request",
            "created_at": start + timedelta(seconds=number),
            "last_seen_at": start + timedelta(days=300, seconds=number),
            "inventory": {},
            "tags": {},
        }
        values: dict[str, str | int] = {
            "os.name": "Debian GNU/Linux",
            "os.version": rng.choice(OS_VERSIONS),
            "kernel": f"{kernel_major}.{rng.randint(0, 19)}.0-arm64",
            "kernel_major": kernel_major,
            "software.openssl": rng.choice(OPENSSL),
            "attributes.line": str(rng.randint(1, 40)),
            "tag.site": rng.choice(SITES),
        }
        attributes = [
            {
                "device_id": device_id,
                "key": key,
                "value_text": str(value),
                "value_num": float(value) if isinstance(value, int) else None,
            }
            for key, value in values.items()
        ]
        yield device, attributes


def _expected(count: int, seed: int) -> Generated:
    """The counts, from the generated data, by the documented semantics (versions compare as text)."""
    matches = reference = 0
    for device, attributes in _devices(count, seed):
        values = {row["key"]: row["value_text"] for row in attributes}
        if device["device_type"] == "rpi4":
            reference += 1
            if values["os.version"] < "12" and values["tag.site"] == "plant-3":
                matches += 1
    return Generated(count, matches, reference)


async def _fill(database: Database, count: int, seed: int) -> None:
    devices: list[dict[str, Any]] = []
    attributes: list[dict[str, Any]] = []

    async def flush(connection: AsyncConnection) -> None:
        if devices:
            await connection.execute(insert(Device), devices)
            await connection.execute(insert(DeviceAttribute), attributes)
        devices.clear()
        attributes.clear()

    async with database.engine.begin() as connection:
        for device, rows in _devices(count, seed):
            devices.append(device)
            attributes.extend(rows)
            if len(devices) == CHUNK:
                await flush(connection)
        await flush(connection)
    async with database.engine.begin() as connection:
        await connection.execute(text("ANALYZE"))


async def _count(connection: AsyncConnection, condition: ColumnElement[bool]) -> int:
    statement = select(func.count()).select_from(Device).where(condition)
    return int((await connection.execute(statement)).scalar_one())


async def _timed(connection: AsyncConnection, expression: str, runs: int) -> tuple[int, float]:
    """The count and the median wall time in ms; parsing and compiling are inside the timing."""
    await _count(connection, compile_filter(expression))  # warm caches and the statement cache
    timings = []
    result = 0
    for _ in range(runs):
        started = time.perf_counter()
        result = await _count(connection, compile_filter(expression))
        timings.append((time.perf_counter() - started) * 1000)
    return result, statistics.median(timings)


async def _explain(connection: AsyncConnection, expression: str) -> str:
    statement = select(func.count()).select_from(Device).where(compile_filter(expression))
    compiled = statement.compile(dialect=connection.dialect)
    parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
    prefix = "EXPLAIN QUERY PLAN " if connection.dialect.name == "sqlite" else "EXPLAIN "
    rows = (await connection.exec_driver_sql(prefix + str(compiled), parameters)).all()
    return "\n".join(" | ".join(str(column) for column in row) for row in rows)


async def _run(url: str, backend: str, count: int, runs: int, seed: int, explain: bool) -> dict[str, Any]:
    database = Database(url)
    try:
        started = time.perf_counter()
        await _fill(database, count, seed)
        print(
            f"[{backend}] inserted {count} devices in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        expected = _expected(count, seed)
        async with database.engine.connect() as connection:
            if explain:
                for expression in (FILTER, REFERENCE):
                    plan = await _explain(connection, expression)
                    print(f"[{backend}] plan of {expression}:\n{plan}", file=sys.stderr)
            matches, filter_ms = await _timed(connection, FILTER, runs)
            reference_matches, reference_ms = await _timed(connection, REFERENCE, runs)
    finally:
        await database.dispose()
    if (matches, reference_matches) != (expected.filter_matches, expected.reference_matches):
        raise SystemExit(
            f"{backend}: counted {matches} and {reference_matches}, the data has "
            f"{expected.filter_matches} and {expected.reference_matches}"
        )
    return {
        "benchmark": "dynamic_group",
        "backend": backend,
        "devices": count,
        "matches": matches,
        "filter_ms_p50": round(filter_ms, 2),
        "reference_ms_p50": round(reference_ms, 2),
        "ratio": round(filter_ms / reference_ms, 2),
    }


def bench(backend: str, count: int, runs: int, seed: int, explain: bool) -> dict[str, Any]:
    # Migrations run their own event loop, so each step gets its own asyncio.run.
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="fk-bench-") as directory:
            url = f"sqlite+aiosqlite:///{directory}/fleetkeeper.db"
            upgrade(url)
            return asyncio.run(_run(url, backend, count, runs, seed, explain))
    return on_fresh_database(lambda url: _run(url, backend, count, runs, seed, explain))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dynamic_group", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each filter (after one warm-up)")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--explain", action="store_true", help="print both query plans to stderr")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    for backend in backends:
        result = bench(backend, args.devices, args.runs, args.seed, args.explain)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

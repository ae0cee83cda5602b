"""Audit chain verification of N records, against reading the same rows and hashing the same bytes.

    python -m bench.audit_verify --records 1000000 --backend both
    python -m bench.audit_verify --records 1000000 --backend postgresql --profile /tmp/verify.txt

For each backend: a fresh database (SQLite in a temporary directory; PostgreSQL a new database on
FLEETKEEPER_BENCH_POSTGRES_URL, dropped after), migrated to head, filled with a correctly chained
log of N records (hashes from `fleetkeeper.audit.chain`, bulk inserted: COPY on PostgreSQL,
executemany on SQLite) and the head row moved to its end. Then, `--runs` times each (median kept):

- `verify`: `fleetkeeper.audit.verification.verify`, what `fleetkeeper audit verify` runs; it must
  find the chain intact with N records;
- reference `read`: the same rows read by the same code, without hashing or checks (the floor that
  the database and its driver set);
- reference `hash`: SHA-256 of each record's canonical bytes (built once, beforehand) in a tight
  loop — the floor of the hashing itself.

Prints one JSON line: for PostgreSQL (with `--backend both`, SQLite's numbers under "sqlite")
seconds for each, records per second, `ratio` (verify / read) and whether the DESIGN.md target
(1,000,000 records in under 5 s, scaled to N) was met. Progress goes to stderr.
`--profile FILE` samples the first timed verification with py-spy (collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import insert, update

from bench.fleet import on_fresh_database
from fleetkeeper.audit.chain import GENESIS_HASH, canonical_json, format_time, record_hash
from fleetkeeper.audit.export import FIELDS
from fleetkeeper.audit.models import AuditHead, AuditRecord
from fleetkeeper.audit.verification import read_chain, verify
from fleetkeeper.core.db import Database
from fleetkeeper.core.migrations import upgrade

TARGET_S_PER_MILLION = 5.0
CHUNK = 20_000
HASH_SAMPLE = 200_000  # records whose bytes the hash reference keeps in memory (scaled to N)
_ACTIONS = (
    ("device", "device.enrollment_requested"),
    ("device", "device.certificate_issued"),
    ("deployment", "deployment.created"),
    ("user", "user.signed_in"),
    ("release", "release.uploaded"),
)


def records(count: int, seed: int) -> Iterator[tuple[Any, ...]]:
    """A correctly chained log, with the mix of actors, actions and details a fleet writes."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    prev_hash = GENESIS_HASH
    for seq in range(1, count + 1):
        object_type, action = _ACTIONS[seq % len(_ACTIONS)]
        device = seq % 3 == 0
        actor = (
            ("device", f"dev_{rng.getrandbits(100):026x}", None)
            if device
            else (
                "user",
                f"usr_{rng.randrange(50):026d}",
                rng.choice(("alice", "bob", "Zoë", 'o"brien')),
            )
        )
        occurred_at = start + timedelta(microseconds=seq * 1_234_567)
        details = canonical_json(
            {
                "serial": f"{rng.getrandbits(64):x}",
                "not_after": format_time(occurred_at + timedelta(days=30)),
                "identity": {"device_type": "rpi4", "serial": f"SN-{seq:08d}"},
            }
        )
        fields = (
            seq,
            f"aud_{seq:026d}",
            occurred_at,
            actor[0],
            actor[1],
            actor[2],
            f"10.{seq % 256}.{seq // 256 % 256}.{seq % 7}",
            action,
            object_type,
            f"{object_type[:3]}_{rng.getrandbits(100):026x}",
            "success" if seq % 50 else "denied",
            details,
            prev_hash,
        )
        prev_hash = record_hash(*fields[:2], format_time(occurred_at), *fields[3:])
        yield (*fields, prev_hash)


async def fill(database: Database, count: int, seed: int) -> None:
    last: tuple[Any, ...] | None = None
    if database.url.startswith("postgresql"):
        connection = await asyncpg.connect(_plain_url(database.url))
        try:
            batch: list[tuple[Any, ...]] = []
            for row in records(count, seed):
                batch.append(row)
                if len(batch) == CHUNK:
                    await connection.copy_records_to_table("audit_records", records=batch, columns=FIELDS)
                    last, batch = batch[-1], []
            if batch:
                await connection.copy_records_to_table("audit_records", records=batch, columns=FIELDS)
                last = batch[-1]
        finally:
            await connection.close()
    async with database.engine.begin() as connection:
        if not database.url.startswith("postgresql"):
            rows: list[dict[str, Any]] = []
            for row in records(count, seed):
                rows.append(dict(zip(FIELDS, row, strict=True)))
                if len(rows) == CHUNK:
                    await connection.execute(insert(AuditRecord), rows)
                    last, rows = row, []
            if rows:
                await connection.execute(insert(AuditRecord), rows)
                last = tuple(rows[-1].values())
        if last is not None:
            await connection.execute(
                update(AuditHead).where(AuditHead.id == 1).values(seq=last[0], hash=last[13])
            )
    async with database.engine.connect() as connection:
        await connection.exec_driver_sql("ANALYZE")


def _plain_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def hash_floor(count: int, seed: int) -> float:
    """Seconds to SHA-256 N records' canonical bytes, measured on up to HASH_SAMPLE of them."""
    sample = min(count, HASH_SAMPLE)
    inputs = []
    for row in records(sample, seed):
        fields = dict(zip(FIELDS[:13], row, strict=False))
        fields["occurred_at"] = format_time(row[2])
        inputs.append(canonical_json(fields).encode("utf-8"))  # the documented hash input
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for data in inputs:
        sha256(data).hexdigest()
    return (time.perf_counter() - started) * count / sample


async def read_floor(database: Database) -> tuple[float, int]:
    """Seconds to read every record the way verification does, without looking at them."""
    started = time.perf_counter()
    rows = 0
    async for batch in read_chain(database):
        rows += len(batch)
    return time.perf_counter() - started, rows


def _py_spy() -> str:
    """py-spy from the virtual environment running this, else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.path.exists(beside) else "py-spy"


async def timed_verify(database: Database, count: int, profile: str | None) -> tuple[float, float]:
    """Wall and CPU seconds of this process (the database's own CPU is not in the second)."""
    spy = None
    if profile:
        command = [_py_spy(), "record", "--pid", str(os.getpid()), "--rate", "250", "--format", "raw"]
        spy = subprocess.Popen([*command, "--output", profile], stdout=subprocess.DEVNULL)  # noqa: ASYNC220
        await asyncio.sleep(1.0)  # py-spy attaches
    started, cpu_started = time.perf_counter(), time.process_time()
    result = await verify(database)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
        spy.wait(timeout=60)
    if not result.ok or result.checked != count:
        raise SystemExit(f"verification failed on the generated log: {result}")
    return elapsed, cpu


async def _run(url: str, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    database = Database(url)
    try:
        started = time.perf_counter()
        await fill(database, args.records, args.seed)
        fill_s = time.perf_counter() - started
        print(f"[{backend}] inserted {args.records} records in {fill_s:.1f} s", file=sys.stderr)
        await read_floor(database)  # warm the cache for both
        verify_times, cpu_times, read_times = [], [], []
        for run in range(args.runs):
            wall, cpu = await timed_verify(database, args.records, args.profile if run == 0 else None)
            verify_times.append(wall)
            cpu_times.append(cpu)
            read_s, rows = await read_floor(database)
            if rows != args.records:
                raise SystemExit(f"read {rows} records, inserted {args.records}")
            read_times.append(read_s)
            print(f"[{backend}] verify {wall:.2f} s ({cpu:.2f} s CPU), read {read_s:.2f} s", file=sys.stderr)
    finally:
        await database.dispose()
    hash_s = hash_floor(args.records, args.seed)
    verify_s, read_s = statistics.median(verify_times), statistics.median(read_times)
    target_s = TARGET_S_PER_MILLION * args.records / 1_000_000
    return {
        "benchmark": "audit_verify",
        "backend": backend,
        "records": args.records,
        "verify_s": round(verify_s, 3),
        "verify_records_per_s": round(args.records / verify_s),
        "verify_cpu_s": round(statistics.median(cpu_times), 3),
        "read_s": round(read_s, 3),
        "hash_s": round(hash_s, 3),
        "ratio": round(verify_s / read_s, 2),
        "target_s": target_s,
        "within_target": verify_s < target_s,
        "fill_s": round(fill_s, 1),
        "runs": args.runs,
    }


def bench(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    # Migrations run their own event loop, so each step gets its own asyncio.run.
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="fk-bench-") as directory:
            url = f"sqlite+aiosqlite:///{directory}/fleetkeeper.db"
            upgrade(url)
            return asyncio.run(_run(url, backend, args))
    return on_fresh_database(lambda url: _run(url, backend, args))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_verify", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--records", type=int, default=1_000_000, help="records in the log (default 1,000,000)"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3, help="timed verifications (and reads) per backend")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--profile", help="write py-spy's collapsed stacks of the first verification here")
    args = parser.parse_args()
    if args.records < 1 or args.runs < 1:
        parser.error("--records and --runs must be at least 1")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results = {backend: bench(backend, args) for backend in backends}
    # One line: PostgreSQL (the scale the target is about) on top, SQLite's numbers beside it.
    line = results.get("postgresql") or results["sqlite"]
    if len(results) > 1:
        line["sqlite"] = {key: value for key, value in results["sqlite"].items() if key != "benchmark"}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

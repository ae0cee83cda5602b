"""Device check-ins against a real server on PostgreSQL with a large fleet registered.

    python -m bench.checkin [--devices 1000000] [--duration 20] [--concurrency 64]
                            [--certified 1000] [--processes 2] [--device-workers CPUS]
                            [--rounds 4] [--profile PATH]

Makes a fresh PostgreSQL database with N accepted devices (bench/fleet.py), one active deployment
of release fw 2.0 to all of them (`deployments.rollout.create`, one phase), starts `fleetkeeper
serve` on it with `--device-workers` processes on the device listener (free ports, temporary data
directory), and gives `--certified` devices, spread over the fleet, a client certificate from the
server's CA (recorded as enrollment records it).

Load: `--processes` worker processes, each a uvloop event loop holding its share of
`--concurrency` keep-alive mTLS connections (a hand-written HTTP/1.1 client protocol), each
connection one device sending one request after the other. Steps, on the same server:

1. warm-up: every certified device checks in once (its first check-in signs its director
   metadata for the deployment) and fetches its director targets, which must name the device and
   the release;
2. check-ins: `GET /device/v1/director/metadata/timestamp.json` for `--duration` seconds; each
   answer must be 200 and the same signed timestamp the device got when it connected;
3. reference: `GET /device/v1/ping` (204, no database) for `--duration` seconds.

Steps 2 and 3 alternate in `--rounds` windows of `--duration / --rounds` seconds each, so that a
change of the machine's load during the run falls on both alike.

Prints one JSON line with rates, latency percentiles, their ratio and the errors (non-200/204
answers, wrong bodies, broken connections).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import uvloop
from tests.conftest import start_server

from bench.fleet import GROUP_NAME, RELEASE, RELEASE_TARGET_PATH, analyze, device_id, fill, fresh_database
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.principal import Principal
from fleetkeeper.core.db import Database
from fleetkeeper.core.pki import (
    PkiPaths,
    generate_private_key,
    load_ca,
    write_private_key,
)
from fleetkeeper.deployments.rollout import DeploymentRequest, create
from fleetkeeper.devices.certificates import issue

CHECKIN_PATH = "/device/v1/director/metadata/timestamp.json"
TARGETS_PATH = "/device/v1/director/metadata/targets.json"
NOOP_PATH = "/device/v1/ping"


@dataclass(frozen=True)
class Credential:
    device_id: str
    cert: str
    key: str


@dataclass(frozen=True)
class WorkerJob:
    host: str
    port: int
    ca: str
    credentials: list[Credential]
    path: str
    start_at: float  # time.time() when the measured window opens
    duration: float


# --- HTTP/1.1 over one keep-alive mTLS connection -----------------------------------------------


class Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client of one request at a time, as an asyncio protocol on uvloop:
    the load generator shares the server's two cores, so each request must cost it little."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            cls, host, port, ssl=context, server_hostname="localhost"
        )
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TLS transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = self.answer
        if answer is None or answer.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            status, length = _head(bytes(self.buffer[:end]))
        except (ValueError, RuntimeError) as error:
            answer.set_exception(error)
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        answer.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionResetError("the server closed the connection"))

    async def get(self, path: str) -> tuple[int, bytes]:
        assert self.transport is not None
        if self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        return await self.answer

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _head(head: bytes) -> tuple[int, int]:
    """The status and Content-Length of an answer's head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked answers are not expected here")
    return status, length


def _context(ca: str, credential: Credential) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(credential.cert, credential.key)
    return context


def _is_timestamp(body: bytes) -> bool:
    try:
        return bool(json.loads(body)["signed"]["_type"] == "timestamp")
    except (ValueError, KeyError, TypeError):
        return False


def _names_device(body: bytes, device: str) -> bool:
    """Director targets that assign the deployment's release to this device."""
    try:
        entry = json.loads(body)["signed"]["targets"][RELEASE_TARGET_PATH]
        return any(
            isinstance(custom, dict) and custom.get("device_id") == device
            for custom in entry["custom"].values()
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


# --- the worker processes -----------------------------------------------------------------------


def warm_up(job: WorkerJob) -> dict[str, Any]:
    return uvloop.run(_warm_up(job))


async def _warm_up(job: WorkerJob) -> dict[str, Any]:
    errors: list[str] = []

    async def one(credential: Credential) -> None:
        connection = await Connection.open(job.host, job.port, _context(job.ca, credential))
        try:
            status, body = await connection.get(CHECKIN_PATH)
            if status != 200 or not _is_timestamp(body):
                errors.append(f"{credential.device_id}: check-in {status} {body[:200]!r}")
                return
            status, body = await connection.get(TARGETS_PATH)
            if status != 200 or not _names_device(body, credential.device_id):
                errors.append(f"{credential.device_id}: targets {status} {body[:200]!r}")
        finally:
            await connection.close()

    limit = asyncio.Semaphore(16)

    async def bounded(credential: Credential) -> None:
        async with limit:
            await one(credential)

    await asyncio.gather(*(bounded(credential) for credential in job.credentials))
    return {"devices": len(job.credentials), "errors": errors}


def drive(job: WorkerJob) -> dict[str, Any]:
    return uvloop.run(_drive(job))


async def _drive(job: WorkerJob) -> dict[str, Any]:
    """One request after the other on each connection; latencies of those sent in the window."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    end_at = job.start_at + job.duration

    def fail(kind: str) -> None:
        failures[kind] = failures.get(kind, 0) + 1

    async def run(credential: Credential) -> None:
        connection = await Connection.open(job.host, job.port, _context(job.ca, credential))
        try:
            # The first answer is what every later one must equal (an unchanged check-in).
            status, expected = await connection.get(job.path)
            if status not in (200, 204) or (status == 200 and not _is_timestamp(expected)):
                fail(f"first answer {status}")
                return
            await asyncio.sleep(max(0.0, job.start_at - time.time()))
            while True:
                started = time.perf_counter()
                if time.time() >= end_at:
                    return
                status, body = await connection.get(job.path)
                latencies.append(time.perf_counter() - started)
                if status not in (200, 204):
                    fail(f"status {status}")
                elif body != expected:
                    fail("unexpected body")
        except (OSError, ssl.SSLError, ValueError, RuntimeError) as error:
            fail(type(error).__name__)
        finally:
            await connection.close()

    window_cpu: list[float] = []

    async def clock() -> None:
        """The load generator's own CPU time over the window (it shares the server's cores)."""
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
        window_cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end_at - time.time()))
        window_cpu.append(time.process_time())

    await asyncio.gather(clock(), *(run(credential) for credential in job.credentials))
    return {"latencies": latencies, "failures": failures, "cpu_s": window_cpu[1] - window_cpu[0]}


# --- the run ------------------------------------------------------------------------------------


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _split(items: list[Credential], parts: int) -> list[list[Credential]]:
    return [items[index::parts] for index in range(parts)]


def _profile_later(start_at: float, duration: float, pid: int, out: str) -> None:
    """Samples the server's stacks with py-spy during the window (collapsed stacks, one per line)."""
    # py-spy is a dependency of the venv the benchmark runs in, which need not be on PATH.
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [
        str(py_spy) if py_spy.exists() else "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(duration)),
        "--rate",
        "250",
    ]
    command += ["--nonblocking", "--format", "raw", "--output", out]

    def start() -> None:
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    threading.Timer(max(0.0, start_at - time.time()), start).start()


def measure(
    pool: ProcessPoolExecutor,
    *,
    host: str,
    port: int,
    ca: str,
    credentials: list[Credential],
    path: str,
    processes: int,
    duration: float,
    profile: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """One measured window: every connection's latencies (seconds) and failures."""
    start_at = time.time() + 3 + len(credentials) / 200  # time to connect before the window opens
    if profile is not None:
        _profile_later(start_at, duration, *profile)
    jobs = [
        WorkerJob(host, port, ca, share, path, start_at, duration)
        for share in _split(credentials, processes)
        if share
    ]
    results = list(pool.map(drive, jobs))
    failures: dict[str, int] = {}
    for result in results:
        for kind, count in result["failures"].items():
            failures[kind] = failures.get(kind, 0) + count
    return {
        "latencies": [latency for result in results for latency in result["latencies"]],
        "failures": failures,
        "requests": sum(len(result["latencies"]) for result in results) + len(credentials),
        "load_generator_cpu_s": sum(result["cpu_s"] for result in results),
    }


def summarize(windows: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """Rate and latency percentiles over the windows of one kind of request."""
    ordered = sorted(latency for window in windows for latency in window["latencies"])
    failures: dict[str, int] = {}
    for window in windows:
        for kind, count in window["failures"].items():
            failures[kind] = failures.get(kind, 0) + count
    return {
        "requests": sum(window["requests"] for window in windows),  # with each connection's first
        "per_s": len(ordered) / duration,
        "p50_ms": _percentile(ordered, 0.50) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "mean_ms": (statistics.fmean(ordered) * 1000) if ordered else float("nan"),
        "errors": sum(failures.values()),
        "failures": failures,
    }


@dataclass(frozen=True)
class Counters:
    transactions: int  # committed and rolled back in the benchmark's database
    server_cpu: float  # seconds of CPU the server's processes used so far
    database_cpu: dict[int, float]  # the same for each PostgreSQL backend of the database


async def counters(url: str, server_pid: int) -> Counters:
    """Transactions PostgreSQL counted in the database so far (an autocommit statement is one),
    and the CPU time of the server and of the database's backends (other databases' are not)."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        count = await connection.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        backends = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return Counters(
        int(count),
        sum(_cpu_seconds(pid) for pid in _with_children(server_pid)),
        {row["pid"]: _cpu_seconds(row["pid"]) for row in backends},
    )


def _with_children(pid: int) -> list[int]:
    """The server's process and its device workers (its children)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def per_request(url: str, server_pid: int, step: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Runs a measured step; also returns what each request cost: PostgreSQL transactions, and
    milliseconds of CPU in the server and in PostgreSQL — costs that depend much less than rates
    on what else the machine is doing."""
    before = await counters(url, server_pid)
    result = await asyncio.to_thread(step)
    await asyncio.sleep(1.5)  # backends publish their counters at most once a second
    after = await counters(url, server_pid)
    requests = max(1, result["requests"])
    database_cpu = sum(cpu - before.database_cpu.get(pid, 0.0) for pid, cpu in after.database_cpu.items())
    return result, {
        "pg_transactions": (after.transactions - before.transactions - 1) / requests,
        "server_cpu_ms": (after.server_cpu - before.server_cpu) * 1000 / requests,
        "pg_cpu_ms": database_cpu * 1000 / requests,
        "load_generator_cpu_ms": result["load_generator_cpu_s"] * 1000 / requests,
    }


async def certify(database: Database, pki_dir: Path, out_dir: Path, devices: list[str]) -> list[Credential]:
    """Client certificates from the server's CA, recorded the way enrollment records them."""
    paths = PkiPaths(pki_dir)
    ca = load_ca(paths)
    issued = []
    async with database.transaction() as session:
        for device in devices:
            key = generate_private_key()
            row = await issue(session, ca, device, key.public_key(), timedelta(days=1))
            issued.append((device, row.pem, key))

    def write() -> list[Credential]:
        credentials = []
        for device, pem, key in issued:
            credential = Credential(device, str(out_dir / f"{device}.crt"), str(out_dir / f"{device}.key"))
            Path(credential.cert).write_text(pem)
            write_private_key(Path(credential.key), key)
            credentials.append(credential)
        return credentials

    return await asyncio.to_thread(write)


async def prepare(database: Database, count: int) -> None:
    started = time.perf_counter()
    await fill(database, count)
    print(f"inserted {count} devices in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    started = time.perf_counter()
    principal = Principal(
        user_id="usr_bench", username="bench", grants=GrantSet.everything(), method="password"
    )
    request = DeploymentRequest(
        name="check-in benchmark",
        release_name=RELEASE[0],
        release_version=RELEASE[1],
        target={"group": GROUP_NAME},
        phases=[{"size": {"percent": 100}}],
    )
    await create(SimpleNamespace(database=database), principal, request)  # type: ignore[arg-type]
    await analyze(database)
    print(f"deployment to all of them in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    certified = min(args.certified, args.devices)
    concurrency = min(args.concurrency, certified)
    stride = args.devices // certified
    async with fresh_database() as url:
        database = Database(url)
        try:
            await prepare(database, args.devices)
            with tempfile.TemporaryDirectory(prefix="fk-checkin-") as work_dir:
                work = Path(work_dir)
                (work / "certs").mkdir()
                server = await asyncio.to_thread(
                    start_server,
                    work / "data",
                    url,
                    env={"FLEETKEEPER_DEVICE_WORKERS": str(args.device_workers)},
                    timeout=120,
                )
                try:
                    credentials = await certify(
                        database,
                        work / "data" / "pki",
                        work / "certs",
                        [device_id(number * stride) for number in range(certified)],
                    )
                    print(f"server up, {certified} devices certified", file=sys.stderr)
                    device_url = urlsplit(server.device_url)
                    host, port = device_url.hostname or "127.0.0.1", device_url.port or 443
                    ca = str(server.ca_cert)
                    context = get_context("spawn")
                    with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
                        started = time.perf_counter()
                        warm = list(
                            pool.map(
                                warm_up,
                                [
                                    WorkerJob(host, port, ca, share, CHECKIN_PATH, 0, 0)
                                    for share in _split(credentials, args.processes)
                                ],
                            )
                        )
                        warm_errors = [error for result in warm for error in result["errors"]]
                        print(
                            f"warm-up: {certified} first check-ins in "
                            f"{time.perf_counter() - started:.1f} s, {len(warm_errors)} errors "
                            f"{warm_errors[:3]}",
                            file=sys.stderr,
                        )
                        common = {
                            "host": host,
                            "port": port,
                            "ca": ca,
                            "processes": args.processes,
                        }
                        # Connection i is device i; the others checked in at warm-up only.
                        connected = credentials[:concurrency]
                        window = args.duration / args.rounds
                        checkin_windows: list[dict[str, Any]] = []
                        noop_windows: list[dict[str, Any]] = []
                        costs: dict[str, dict[str, float]] = {"checkin": {}, "noop": {}}
                        # Alternating windows: a change of the machine's load during the run
                        # falls on both kinds of request alike.
                        for number in range(args.rounds):
                            for path, windows, kind in (
                                (CHECKIN_PATH, checkin_windows, "checkin"),
                                (NOOP_PATH, noop_windows, "noop"),
                            ):
                                profile = (
                                    (server.process.pid, f"{args.profile}.{kind}.{number}")
                                    if args.profile
                                    else None
                                )
                                step = functools.partial(
                                    measure,
                                    pool,
                                    credentials=connected,
                                    path=path,
                                    duration=window,
                                    profile=profile,
                                    **common,
                                )
                                result, cost = await per_request(url, server.process.pid, step)
                                windows.append(result)
                                for name, value in cost.items():
                                    costs[kind][name] = costs[kind].get(name, 0.0) + value / args.rounds
                        checkins = summarize(checkin_windows, args.duration)
                        print(f"check-ins: {checkins}", file=sys.stderr)
                        noop = summarize(noop_windows, args.duration)
                        print(f"no-op: {noop}", file=sys.stderr)
                finally:
                    server.stop()
        finally:
            await database.dispose()
    return {
        "benchmark": "device_checkin",
        "backend": "postgresql",
        "devices": args.devices,
        "certified_devices": certified,
        "concurrency": concurrency,
        "processes": args.processes,
        "device_workers": args.device_workers,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "checkins_per_s": round(checkins["per_s"], 1),
        "p50_ms": round(checkins["p50_ms"], 2),
        "p99_ms": round(checkins["p99_ms"], 2),
        "noop_per_s": round(noop["per_s"], 1),
        "noop_p50_ms": round(noop["p50_ms"], 2),
        "noop_p99_ms": round(noop["p99_ms"], 2),
        "ratio": round(checkins["per_s"] / noop["per_s"], 3) if noop["per_s"] else None,
        "errors": checkins["errors"] + noop["errors"] + len(warm_errors),
        **{f"{name}_per_{kind}": round(value, 3) for kind in costs for name, value in costs[kind].items()},
        # What a no-op costs over what a check-in costs, in CPU of the server and PostgreSQL.
        "cpu_ratio": round(_cpu(costs["noop"]) / _cpu(costs["checkin"]), 3)
        if _cpu(costs["checkin"])
        else None,
    }


def _cpu(cost: dict[str, float]) -> float:
    return cost.get("server_cpu_ms", 0.0) + cost.get("pg_cpu_ms", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured step")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--certified", type=int, default=1000, help="devices given a certificate")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--device-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="the server's device_workers: processes accepting device connections [CPU count]",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="alternate check-in and no-op windows this many times (each --duration/--rounds s)",
    )
    parser.add_argument(
        "--profile",
        help="py-spy's collapsed stacks of the server, one file per window: PATH.checkin.N, PATH.noop.N",
    )
    args = parser.parse_args()
    for name in ("devices", "concurrency", "certified", "processes", "device_workers", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be between 0 and 600 seconds")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()

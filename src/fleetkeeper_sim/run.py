"""A run: the devices of one or several processes, each process one event loop, for a bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fleetkeeper_sim.device import Fleet, Settings, SimDevice, UnreachableError
from fleetkeeper_sim.state import SimError, StateDir, loopback_target
from fleetkeeper_sim.stats import Stats

GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class RunOptions:
    server_url: str
    ca: Path
    token: str | None
    state_dir: Path
    devices: int
    pending: int
    device_types: tuple[str, ...]
    duration: float
    interval: float
    inventory_interval: float
    failure_rate: float
    concurrency: int
    enroll_concurrency: int
    max_download_bytes: int
    processes: int
    timeout: float
    enroll_only: bool = False  # stop each device once it is enrolled (prepares a state directory)


@dataclass(frozen=True)
class Share:
    """The devices one process simulates: indices into the state directory."""

    devices: tuple[int, ...]
    pending: tuple[int, ...]


def run(options: RunOptions) -> tuple[dict[str, Any], Stats]:
    """Runs the fleet; returns the report (as printed with --json) and the merged counters."""
    loopback_target(options.server_url)
    ca_pem = _read_ca(options.ca)
    StateDir(options.state_dir, ca_pem)  # created, or checked to belong to this fleet CA, once
    processes = max(1, min(options.processes, options.devices or 1))
    shares = [
        Share(
            tuple(range(number, options.devices, processes)),
            tuple(range(options.pending)) if number == 0 else (),
        )
        for number in range(processes)
    ]
    started = time.monotonic()
    if processes == 1:
        wires = [run_share(options, shares[0])]
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            wires = list(pool.map(run_share, [options] * processes, shares))
    elapsed = time.monotonic() - started
    stats = Stats()
    devices: dict[str, int] = {}
    for wire in wires:
        stats.merge(Stats.from_wire(wire["stats"]))
        for status, count in wire["devices"].items():
            devices[status] = devices.get(status, 0) + count
    report = {"tool": "fleetkeeper-sim", "devices": devices, **stats.report(elapsed)}
    report["options"] = {
        "devices": options.devices,
        "pending": options.pending,
        "processes": processes,
        "interval_s": options.interval,
        "failure_rate": options.failure_rate,
    }
    return report, stats


def _read_ca(path: Path) -> bytes:
    try:
        ca_pem = path.read_bytes()
    except OSError as exc:
        raise SimError(f"cannot read the fleet CA {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise SimError(f"{path} holds no PEM certificate")
    return ca_pem


def run_share(options: RunOptions, share: Share) -> dict[str, Any]:
    """One process's devices, to the end of the run or a SIGINT/SIGTERM; returns picklable results."""
    return asyncio.run(_run_share(options, share))


async def _run_share(options: RunOptions, share: Share) -> dict[str, Any]:
    host, port = loopback_target(options.server_url)
    ca_pem = _read_ca(options.ca)
    state = StateDir(options.state_dir, ca_pem)
    settings = Settings(
        server_url=options.server_url.rstrip("/"),
        host=host,
        port=port,
        ca_pem=ca_pem,
        token=options.token,
        failure_rate=options.failure_rate,
        inventory_interval=options.inventory_interval,
        max_download_bytes=options.max_download_bytes,
        timeout=options.timeout,
    )
    stats = Stats()
    fleet = Fleet(settings, stats)
    types = options.device_types
    devices = [
        SimDevice(state.device_dir(index), types[index % len(types)], state.serial(index), pending_only=False)
        for index in share.devices
    ] + [
        SimDevice(
            state.device_dir(index, pending=True),
            types[index % len(types)],
            state.serial(index, pending=True),
            pending_only=True,
        )
        for index in share.pending
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    end = time.monotonic() + options.duration
    checkins = asyncio.Semaphore(options.concurrency)
    enrollments = asyncio.Semaphore(options.enroll_concurrency)
    fatal: list[SimError] = []
    rng = random.Random()  # noqa: S311 - spreading check-ins, not secrets

    async def pause(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, min(seconds, end - time.monotonic())))

    def running() -> bool:
        return not stop.is_set() and time.monotonic() < end

    async def live(device: SimDevice) -> None:
        # Devices enrolled in an earlier run start spread over one interval, as a real fleet does.
        if device.accepted and not options.enroll_only:
            await pause(rng.uniform(0, options.interval))
        while running() and not device.progress.rejected:
            if options.enroll_only and device.identity.device_id:  # accepted, or pending and asked
                return
            try:
                if device.accepted:
                    async with checkins:
                        await device.check_in(fleet)
                else:
                    async with enrollments:
                        await device.enroll(fleet)
                    if device.accepted:
                        continue  # its first check-in follows at once
            except UnreachableError:
                pass
            except SimError as exc:
                fatal.append(exc)
                stop.set()
                return
            await pause(options.interval)

    try:
        every = asyncio.gather(*(live(device) for device in devices))
        stopped = asyncio.ensure_future(stop.wait())
        first: list[asyncio.Future[Any]] = [every, stopped]
        await asyncio.wait(first, timeout=options.duration, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        # Check-ins under way may finish (and be counted) for a moment; then the run ends on time.
        await asyncio.wait([every], timeout=min(GRACE_SECONDS, options.timeout))
        every.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await every
        stopped.cancel()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if fatal:
        raise fatal[0]
    statuses: dict[str, int] = {}
    for device in devices:
        status = "rejected" if device.progress.rejected else device.identity.status
        statuses[status] = statuses.get(status, 0) + 1
    return {"stats": stats.to_wire(), "devices": statuses}


def describe_errors(stats: Stats) -> str:
    """One line for the end of a run with errors: the most common reason, and a hint when it is the
    server being away."""
    reason, count = stats.errors.most_common(1)[0]
    hint = ""
    if "refused" in reason or "connection closed" in reason or "timeout" in reason:
        hint = " — is the server running?"
    return f"{stats.error_count} requests failed; most often {reason!r} ({count}×){hint}"

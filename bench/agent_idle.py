"""The agent daemon's resident memory while idle and the CPU time of one check-in, against a bare
Python interpreter in the same run.

    python -m bench.agent_idle [--seconds 8] [--checkins 10]
    python -m bench.agent_idle --checkins 0      # memory only, no server

The daemon's second resident process, the control channel (`fleetkeeper-agent channel`), is
sampled too and reported beside it (`channel_rss_kb`); the target is the daemon's loop alone.

Starts `fleetkeeper-agent run` with a configuration in a temporary directory (a check-in interval
of an hour, so it sits idle after its first check-in, which fails at once for want of an identity),
waits until the first worker has exited, then samples VmRSS of the daemon process for a few seconds.
The reference is `python -c "import time; time.sleep(60)"` sampled the same way. Target
(DESIGN.md): ≤ 30 MB.

CPU per check-in: starts `fleetkeeper serve` (embedded SQLite, temporary directory) with trust
installed (the end-to-end harness, tests/e2e/fleet.py), enrolls one agent (accepted by the
operator), lets it make its first check-in (inventory report), then runs `--checkins` more
check-ins the way the daemon does — one worker process each, `fleetkeeper-agent run --once` —
and takes the user + system CPU seconds of each worker and its children from
`resource.getrusage(RUSAGE_CHILDREN)`. References, measured the same way: `python -c pass` (an
interpreter's start) and `python -c "import fleetkeeper_agent.checkin"` (start and the worker's
imports). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_KB = 30 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def command_line(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    except OSError:
        return []


def workers(daemon: int) -> list[int]:
    """The daemon's check-in workers (`run --once`); its other child is the control channel."""
    return [pid for pid in children(daemon) if b"--once" in command_line(pid)]


def channel(daemon: int) -> int | None:
    found = [pid for pid in children(daemon) if b"channel" in command_line(pid)]
    return found[0] if found else None


def sample(pid: int, seconds: float) -> int:
    """The largest RSS seen over `seconds`, sampled every 100 ms."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_kb(pid))
        time.sleep(0.1)
    return peak


def child_cpu(run: Callable[[], object]) -> float:
    """User + system CPU seconds of the processes `run` starts and waits for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def python_cpu(code: str, times: int) -> float:
    """The median CPU seconds of `python -c code`."""
    command = [sys.executable, "-c", code]
    return statistics.median(child_cpu(lambda: subprocess.run(command, check=True)) for _ in range(times))


async def checkin_cpu(checkins: int) -> dict[str, Any]:
    # The end-to-end harness: a real server with trust installed, and agents as the tests run them.
    from tests.conftest import Api, start_server
    from tests.e2e.fleet import Fleet, management_client

    with tempfile.TemporaryDirectory(prefix="fk-agent-cpu-") as scratch:
        work = Path(scratch)
        server = await asyncio.to_thread(start_server, work / "server", None, None, 120)
        try:
            async with management_client(server) as client:
                assert server.admin_password
                fleet = Fleet(server, work, Api(client, None, server.admin_password))  # type: ignore[arg-type]
                await fleet.setup()
                agent = fleet.agent("cpu-bench")
                first = await asyncio.to_thread(agent.run_once)  # enrolls: pending
                await fleet.accept_pending(1)
                statuses = [first, await asyncio.to_thread(agent.run_once)]  # certificate, inventory
                seconds = []
                for _ in range(checkins):
                    seconds.append(child_cpu(lambda: statuses.append(agent.run_once())))
        finally:
            server.stop()
    if any(status != 0 for status in statuses[1:]):
        raise SystemExit(f"check-ins failed: exit statuses {statuses}\n{agent.log()}")
    return {
        "checkins": checkins,
        "checkin_cpu_s": round(statistics.median(seconds), 3),
        "checkin_cpu_s_max": round(max(seconds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_idle", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="RSS sampling time (default 8)")
    parser.add_argument("--checkins", type=int, default=10, help="check-ins timed for CPU (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "agent.toml"
        config.write_text(f'data_dir = "{scratch}/data"\n[check_in]\ninterval = 3600\nmax_backoff = 3600\n')
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fleetkeeper_agent", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            deadline = time.monotonic() + 60
            while workers(daemon.pid) and time.monotonic() < deadline:
                time.sleep(0.1)  # the first worker's check-in
            idle = sample(daemon.pid, args.seconds)
            # The control channel, idle: not enrolled here, but it has loaded all it will (the
            # standard library and websockets); connected, it measured 28.9 MB (docs/agent.md).
            channel_pid = channel(daemon.pid)
            channel_idle = sample(channel_pid, args.seconds) if channel_pid else None
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    reference = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1.0)
        bare = sample(reference.pid, args.seconds)
    finally:
        reference.kill()
        reference.wait()
    result: dict[str, Any] = {
        "benchmark": "agent_idle_rss",
        "agent_rss_kb": idle,
        "bare_python_rss_kb": bare,
        "target_kb": TARGET_KB,
        "within_target": idle <= TARGET_KB,
        "ratio_to_bare_python": round(idle / bare, 2),
        "channel_rss_kb": channel_idle,
    }
    if args.checkins > 0:
        cpu = asyncio.run(checkin_cpu(args.checkins))
        start_s = python_cpu("pass", args.checkins)
        imports_s = python_cpu("import fleetkeeper_agent.checkin", args.checkins)
        result |= {
            **cpu,
            "python_start_cpu_s": round(start_s, 3),
            "worker_imports_cpu_s": round(imports_s, 3),
            "checkin_ratio_to_python_start": round(cpu["checkin_cpu_s"] / start_s, 1),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

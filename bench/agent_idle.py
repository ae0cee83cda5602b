"""The agent daemon's resident memory while idle, against a bare Python interpreter in the same run.

    python -m bench.agent_idle [--seconds 8]

The daemon's second resident process, the control channel (`fleetkeeper-agent channel`), is
sampled too and reported beside it (`channel_rss_kb`); the target is the daemon's loop alone.

Starts `fleetkeeper-agent run` with a configuration in a temporary directory (a check-in interval
of an hour, so it sits idle after its first check-in, which fails at once for want of an identity),
waits until the first worker has exited, then samples VmRSS of the daemon process for a few seconds.
The reference is `python -c "import time; time.sleep(60)"` sampled the same way. Target
(DESIGN.md): ≤ 30 MB. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
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
    print(
        json.dumps(
            {
                "benchmark": "agent_idle_rss",
                "agent_rss_kb": idle,
                "bare_python_rss_kb": bare,
                "target_kb": TARGET_KB,
                "within_target": idle <= TARGET_KB,
                "ratio_to_bare_python": round(idle / bare, 2),
                "channel_rss_kb": channel_idle,
            }
        )
    )


if __name__ == "__main__":
    main()

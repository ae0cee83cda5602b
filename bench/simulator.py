"""fleetkeeper-sim at scale: N simulated devices enroll, then check in, against a fresh server.

    python -m bench.simulator [--devices 10000] [--interval 30] [--duration 60] [--processes 1]
                              [--postgresql]

Starts `fleetkeeper serve` on free ports (embedded SQLite, or a fresh PostgreSQL database with
--postgresql) with the per-address enrollment limit raised (every simulated device enrolls from
127.0.0.1), signs the first admin in, makes an auto-accepting enrollment token, then runs
`fleetkeeper-sim` twice on one state directory:

1. `--enroll-only`: every device makes its key pair and enrolls (certificates issued per second);
2. the check-ins: each device checks in every `--interval` seconds for `--duration` seconds (the
   state directory is reused: no enrollment). The simulator's peak RSS is sampled meanwhile.

Prints one JSON line: enrollment rate, check-ins/s, p50/p95/p99 per request kind, errors, and the
simulator's peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
from tests.conftest import ADMIN_PASSWORD, POSTGRES_URL, PostgresServer, fleetkeeper_command, start_server

from bench.agent_idle import rss_kb


def admin_token(management_url: str, one_time_password: str, devices: int) -> str:
    with httpx2.Client(base_url=management_url, timeout=30) as client:
        first = client.post("/api/v1/auth/sign-in", json={"username": "admin", "password": one_time_password})
        first.raise_for_status()
        bearer = {"authorization": f"Bearer {first.json()['access_token']}"}
        changed = client.post(
            "/api/v1/me/password",
            json={"current_password": one_time_password, "new_password": ADMIN_PASSWORD},
            headers=bearer,
        )
        changed.raise_for_status()
        signed_in = client.post(
            "/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        signed_in.raise_for_status()
        bearer = {"authorization": f"Bearer {signed_in.json()['access_token']}"}
        made = client.post(
            "/api/v1/enrollment-tokens",
            json={"name": "bench", "max_uses": devices, "auto_accept": True},
            headers=bearer,
        )
        made.raise_for_status()
        return str(made.json()["secret"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sim(command: list[str]) -> tuple[dict[str, Any], int, float]:
    """The simulator's --json report, its peak RSS in KiB (sampled every 200 ms), its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            try:
                peak = max(peak, rss_kb(process.pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output, errors = process.communicate()
    sampler.join()
    if not output.strip():
        raise RuntimeError(f"the simulator failed: {errors[-2000:]}")
    if process.returncode != 0:
        print(errors[-2000:], file=sys.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return json.loads(output.strip().splitlines()[-1]), peak, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between a device's check-ins")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of check-ins")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--postgresql", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fk-sim-") as work_dir:
        work = Path(work_dir)
        database_url = None
        if args.postgresql:
            database_url = asyncio.run(PostgresServer(POSTGRES_URL).create_database())
            subprocess.run(
                fleetkeeper_command("db", "upgrade", "--database-url", database_url),
                check=True,
                capture_output=True,
            )
        limit = f"{args.devices * 10}/minute"
        env = {
            "FLEETKEEPER_ENROLLMENT_LIMIT_PER_ADDRESS": limit,
            "FLEETKEEPER_ENROLLMENT_LIMIT_PER_NETWORK": limit,
        }
        server = start_server(work / "data", database_url, env=env, timeout=120)
        try:
            assert server.admin_password
            token = admin_token(server.management_url, server.admin_password, args.devices)
            common = [sys.executable, "-m", "fleetkeeper_sim", "--server", server.device_url]
            common += ["--ca", str(server.ca_cert), "--state-dir", str(work / "sim"), "--json"]
            common += ["--devices", str(args.devices), "--processes", str(args.processes)]
            started = time.perf_counter()
            enrolled, _, _ = run_sim([*common, "--token", token, "--enroll-only", "--duration", "3600"])
            enroll_seconds = time.perf_counter() - started
            server_cpu = cpu_seconds(server.process.pid)
            checkins, peak_kb, sim_cpu = run_sim(
                [*common, "--interval", str(args.interval), "--duration", str(args.duration)]
            )
            server_cpu = cpu_seconds(server.process.pid) - server_cpu
        finally:
            server.stop()
    kinds = checkins["kinds"]
    print(
        json.dumps(
            {
                "benchmark": "simulator",
                "backend": "postgresql" if args.postgresql else "sqlite",
                "devices": args.devices,
                "processes": args.processes,
                "enrolled": enrolled["devices"],
                "enroll_s": round(enroll_seconds, 1),
                "enrollments_per_s": round(args.devices / enroll_seconds, 1),
                "enroll_p50_ms": enrolled["kinds"].get("enroll", {}).get("p50_ms"),
                "enroll_p99_ms": enrolled["kinds"].get("enroll", {}).get("p99_ms"),
                "interval_s": args.interval,
                "duration_s": checkins["duration_s"],
                "checkins_per_s": kinds.get("checkin", {}).get("per_s"),
                "requests_per_s": checkins["requests_per_s"],
                "latency_ms": {
                    name: {key: kind[key] for key in ("p50_ms", "p95_ms", "p99_ms")}
                    for name, kind in kinds.items()
                },
                "errors": enrolled["errors"] + checkins["errors"],
                "error_reasons": {**enrolled["error_reasons"], **checkins["error_reasons"]},
                "sim_peak_rss_mb": round(peak_kb / 1024, 1),
                # Where the CPU went during the check-ins: who would saturate first on an idle machine.
                "sim_cpu_ms_per_checkin": round(sim_cpu * 1000 / max(1, kinds["checkin"]["requests"]), 2),
                "server_cpu_ms_per_checkin": round(
                    server_cpu * 1000 / max(1, kinds["checkin"]["requests"]), 2
                ),
            }
        )
    )


if __name__ == "__main__":
    main()

"""The benchmark suite: every benchmark as a subprocess, its JSON lines collected, the docs regenerated.

    python -m bench.run [--quick] [--only checkin,download] [--timeout-scale 2] [--no-docs]

`make bench` runs this. Each benchmark runs as `python -m bench.<module> <args>` in its own
process group, bounded by its timeout (SIGINT first, so it drops its databases and stops its
servers; SIGKILL 30 s later). One that fails or times out is recorded as such and the suite goes on.
The results — a first line describing the machine, then one line per benchmark, which is also
printed on stdout — go to `bench-results/<UTC time>.jsonl`, each benchmark's stderr beside it in
`<UTC time>-<name>.log`; `bench/report.py` then rewrites the results table of docs/benchmarks.md.

The full sizes are chosen so the suite fits in 10 minutes on 2 quiet cores; `--quick` runs each at
a smoke-test size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench-results"
DOCS = ROOT / "docs" / "benchmarks.md"
KILL_GRACE_SECONDS = 30
QUICK_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Benchmark:
    name: str  # the row's key in bench/report.py
    module: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout: float  # seconds at the full size; quick runs get 120 s (a server's start dominates)

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, "-m", self.module, *(self.quick_args if quick else self.args)]


# In the order of issue 10's list. Sizes: see docs/benchmarks.md, "Running the suite".
SUITE = (
    Benchmark(
        "checkin",
        "bench.checkin",
        ("--devices", "1000000", "--duration", "10", "--concurrency", "64", "--certified", "256"),
        (
            "--devices",
            "2000",
            "--duration",
            "2",
            "--concurrency",
            "4",
            "--certified",
            "4",
            "--processes",
            "1",
        ),
        150,
    ),
    Benchmark(
        "deployment_create", "bench.deployment_create", ("--devices", "1000000"), ("--devices", "2000"), 120
    ),
    Benchmark(
        "download",
        "bench.download",
        ("--megabytes", "200", "--rounds", "3"),
        ("--megabytes", "4", "--rounds", "1"),
        60,
    ),
    Benchmark(
        "dynamic_group",
        "bench.dynamic_group",
        ("--devices", "250000", "--backend", "postgresql"),
        ("--devices", "2000", "--backend", "sqlite", "--runs", "3"),
        120,
    ),
    Benchmark(
        "audit_verify",
        "bench.audit_verify",
        ("--records", "1000000", "--backend", "postgresql", "--runs", "3"),
        ("--records", "2000", "--backend", "sqlite", "--runs", "1"),
        150,
    ),
    Benchmark("agent_idle", "bench.agent_idle", ("--seconds", "5"), ("--seconds", "1"), 90),
    Benchmark(
        "enrollment",
        "bench.enrollment",
        ("--devices", "2000", "--concurrency", "16", "--backend", "postgresql"),
        ("--devices", "20", "--concurrency", "4", "--backend", "sqlite"),
        60,
    ),
)


def machine() -> dict[str, Any]:
    """What the numbers were measured on; the load average matters on a shared host."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(memory_kb / 1024**2, 1),
        "postgresql": _postgresql_version(),
        "sqlite": sqlite3.sqlite_version,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": _git_commit(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def _postgresql_version() -> str:
    try:
        import asyncpg

        from bench.fleet import POSTGRES_URL

        async def version() -> str:
            connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
            try:
                return str(await connection.fetchval("SHOW server_version"))
            finally:
                await connection.close()

        return asyncio.run(version())
    except (OSError, ImportError, asyncpg.PostgresError) as error:
        return f"unavailable ({type(error).__name__})"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{'+changes' if dirty.strip() else ''}"


def json_lines(output: str) -> list[dict[str, Any]]:
    """The JSON objects among a benchmark's stdout lines (anything else it printed is skipped)."""
    found = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def run_one(benchmark: Benchmark, *, quick: bool, timeout: float, log: Path) -> dict[str, Any]:
    command = benchmark.command(quick)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=timeout)
            status = "ok" if process.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            stdout = _stop(process)
            status = "timeout"
    results = json_lines(stdout)
    if status == "ok" and not results:
        status = "failed"  # it ended well but printed no result
    record: dict[str, Any] = {
        "name": benchmark.name,
        "command": " ".join(["python", *command[1:]]),
        "quick": quick,
        "status": status,
        "exit_code": process.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "timeout_s": timeout,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "results": results,
    }
    if status != "ok":
        record["error"] = _last_lines(log)
    return record


def _stop(process: subprocess.Popen[str]) -> str:
    """Interrupts the benchmark's whole process group, killing it if it does not end in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        stdout, _ = process.communicate(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything it started and left behind
    return stdout or ""


def _last_lines(log: Path, count: int = 5) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def run_suite(
    benchmarks: list[Benchmark], *, quick: bool, timeout_scale: float, results_dir: Path
) -> tuple[Path, list[dict[str, Any]]]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = results_dir / f"{stamp}{'-quick' if quick else ''}.jsonl"
    records = []
    with out.open("w") as handle:
        handle.write(json.dumps({"machine": machine()}) + "\n")
        for benchmark in benchmarks:
            timeout = (QUICK_TIMEOUT_SECONDS if quick else benchmark.timeout) * timeout_scale
            print(f"bench: {benchmark.name} (up to {timeout:.0f} s) ...", file=sys.stderr, flush=True)
            log = results_dir / f"{stamp}-{benchmark.name}.log"
            record = run_one(benchmark, quick=quick, timeout=timeout, log=log)
            print(
                f"bench: {benchmark.name} {record['status']} in {record['seconds']} s (log: {log})",
                file=sys.stderr,
                flush=True,
            )
            line = json.dumps(record)
            print(line, flush=True)
            handle.write(line + "\n")
            handle.flush()
            records.append(record)
    return out, records


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds, not minutes)")
    parser.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(b.name for b in SUITE))
    parser.add_argument(
        "--timeout-scale", type=float, default=1.0, help="multiply every timeout (a loaded host)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--docs", type=Path, default=DOCS, help="the markdown file whose table is rewritten")
    parser.add_argument("--no-docs", action="store_true", help="leave the docs alone")
    args = parser.parse_args()
    by_name = {benchmark.name: benchmark for benchmark in SUITE}
    names = args.only.split(",") if args.only else list(by_name)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    if args.timeout_scale <= 0:
        parser.error("--timeout-scale must be positive")
    started = time.monotonic()
    out, records = run_suite(
        [by_name[name] for name in names],
        quick=args.quick,
        timeout_scale=args.timeout_scale,
        results_dir=args.results_dir,
    )
    print(
        f"bench: {len(records)} benchmarks in {time.monotonic() - started:.0f} s; results in {out}",
        file=sys.stderr,
    )
    if not args.no_docs:
        from bench.report import update_docs

        update_docs(args.docs, out)
        print(f"bench: table rewritten in {args.docs}", file=sys.stderr)
    failed = [record["name"] for record in records if record["status"] != "ok"]
    if failed:
        print(f"bench: not ok: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

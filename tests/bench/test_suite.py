"""The benchmark suite's runner and report (bench/run.py, bench/report.py), at smoke-test sizes.

Nothing here judges a measured number: only that the runner collects each benchmark's JSON line,
records failures and timeouts without stopping, and rewrites just the table of the docs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.report import BEGIN, END, render
from bench.run import ROOT, Benchmark, run_suite

DOCS = ROOT / "docs" / "benchmarks.md"


def _outside_markers(text: str) -> tuple[str, str]:
    return text[: text.index(BEGIN)], text[text.index(END) :]


def test_quick_suite_writes_json_lines_and_the_docs_table(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    shutil.copy(DOCS, docs)
    results = tmp_path / "results"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--only",
            "agent_idle,dynamic_group",
            "--results-dir",
            str(results),
            "--docs",
            str(docs),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    printed = [json.loads(line) for line in finished.stdout.splitlines()]
    assert [record["name"] for record in printed] == ["agent_idle", "dynamic_group"]
    assert all(record["status"] == "ok" and record["quick"] for record in printed)
    idle, group = (record["results"][0] for record in printed)
    assert idle["benchmark"] == "agent_idle_rss"
    assert idle["agent_rss_kb"] > 0
    assert group["benchmark"] == "dynamic_group"
    assert group["devices"] == 2000

    (saved,) = results.glob("*.jsonl")
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    machine = lines[0]["machine"]
    assert machine["cores"] >= 1
    assert machine["cpu"]
    assert machine["sqlite"]
    assert lines[1:] == printed

    text = docs.read_text()
    assert _outside_markers(text) == _outside_markers(DOCS.read_text())
    table = text[text.index(BEGIN) : text.index(END)]
    assert "Quick mode" in table
    assert machine["cpu"] in table
    assert "| [agent idle](#agent-idle-memory" in table
    assert "| [dynamic group filter](#dynamic-group-filter) | 2,000 devices, sqlite" in table
    assert "`python -m bench.dynamic_group --devices 2000 --backend sqlite --runs 3`" in table


def test_a_failing_or_hanging_benchmark_is_recorded_and_the_suite_goes_on(tmp_path: Path) -> None:
    broken = Benchmark("broken", "bench.no_such_benchmark", (), (), 300)
    # A server that never ends stands in for a benchmark that hangs; its timeout stops it.
    hanging = Benchmark("hanging", "http.server", ("--bind", "127.0.0.1", "0"), (), 1)
    working = Benchmark(
        "dynamic_group", "bench.dynamic_group", ("--devices", "200", "--backend", "sqlite"), (), 300
    )
    path, records = run_suite([broken, hanging, working], quick=False, timeout_scale=1, results_dir=tmp_path)

    assert [record["status"] for record in records] == ["failed", "timeout", "ok"]
    assert "No module named bench.no_such_benchmark" in records[0]["error"]
    assert records[1]["results"] == []
    assert records[2]["results"][0]["devices"] == 200

    table = render(path)
    assert "**failed**: " in table
    assert "No module named bench.no_such_benchmark" in table
    assert "**timed out after 1 s**" in table
    assert table.count("**not measured**") == 2
    assert "200 devices, sqlite" in table

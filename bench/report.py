"""The results of a suite run (bench/run.py's JSON lines) as the markdown table of docs/benchmarks.md.

    python -m bench.report [bench-results/<time>.jsonl] [--docs docs/benchmarks.md] [--print]

Without a file, the newest in bench-results/. The table goes between the markers
`<!-- bench:begin -->` and `<!-- bench:end -->`; the rest of the file is left as it is. Each row
shows the result, the reference measured in the same run, their ratio (as the benchmark defines
it, see each section of the docs), the target from DESIGN.md's performance table and whether it
was met. A target made for 1,000,000 devices or records is judged only at that size.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
MILLION = 1_000_000


@dataclass(frozen=True)
class Row:
    size: str
    result: str
    reference: str
    ratio: str
    target: str
    met: str


def _judge(met: bool, size: int | None = None, target_size: int = MILLION) -> str:
    if size is not None and size < target_size:
        return f"— (target is for {target_size:,})"
    return "met" if met else "**not met**"


def _number(value: Any, digits: int = 1) -> str:
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


def _checkin(r: dict[str, Any]) -> Row:
    met = r["checkins_per_s"] >= 3000 and r["p99_ms"] < 50 and (r["ratio"] or 0) >= 0.5
    result = (
        f"{_number(r['checkins_per_s'], 0)}/s, p50 {_number(r['p50_ms'])} ms, p99 {_number(r['p99_ms'])} ms"
    )
    if r.get("errors"):
        result += f", {r['errors']} errors"
    return Row(
        size=f"{r['devices']:,} devices, {r['concurrency']} connections, {r['duration_s']:g} s",
        result=result,
        reference=f"{_number(r['noop_per_s'], 0)}/s, p99 {_number(r['noop_p99_ms'])} ms: no-op route",
        ratio=_number(r["ratio"], 3),
        target="≥ 3,000/s, p99 < 50 ms, ratio ≥ 0.5",
        met=_judge(met, r["devices"]),
    )


def _deployment_create(r: dict[str, Any]) -> Row:
    return Row(
        size=f"{r['devices']:,} devices, 3 phases",
        result=f"{r['seconds']:g} s",
        reference=f"{r['reference_seconds']:g} s: plain `INSERT … SELECT` of the same rows",
        ratio=_number(r["ratio"], 2),
        target="< 2 s",
        met=_judge(r["seconds"] < 2.0, r["devices"]),
    )


def _artifact_download(r: dict[str, Any]) -> Row:
    return Row(
        size=f"{r['megabytes']} MiB, median of {r['rounds']}",
        result=f"{_number(r['mb_per_s'])} MB/s, mTLS",
        reference=f"{_number(r['reference_mb_per_s'])} MB/s: nginx, TLS + client certificate "
        f"(plain HTTP sendfile: {_number(r['nginx_plain_sendfile_mb_per_s'])} MB/s)",
        ratio=_number(r["ratio"], 2),
        target=f"≥ {r['target_ratio']} × nginx",
        met=_judge(r["ratio"] >= r["target_ratio"]),
    )


def _dynamic_group(r: dict[str, Any]) -> Row:
    return Row(
        size=f"{r['devices']:,} devices, {r['backend']}",
        result=f"{_number(r['filter_ms_p50'])} ms p50, {r['matches']:,} matches",
        reference=f'{_number(r["reference_ms_p50"])} ms: `device_type == "rpi4"`',
        ratio=_number(r["ratio"], 1),
        target="— (none in DESIGN.md)",
        met="—",
    )


def _audit_verify(r: dict[str, Any]) -> Row:
    return Row(
        size=f"{r['records']:,} records, {r['backend']}",
        result=f"{r['verify_s']:g} s ({r['verify_records_per_s']:,} records/s)",
        reference=f"{r['read_s']:g} s reading the same rows (hashing alone: {r['hash_s']:g} s)",
        ratio=_number(r["ratio"], 2),
        target="< 5 s for 1,000,000",
        met=_judge(bool(r["within_target"]), r["records"]),
    )


def _agent_idle(r: dict[str, Any]) -> Row:
    result = f"{r['agent_rss_kb'] / 1024:.1f} MB RSS idle"
    if r.get("channel_rss_kb"):
        result += f" (control channel: {r['channel_rss_kb'] / 1024:.1f} MB)"
    reference = f"{r['bare_python_rss_kb'] / 1024:.1f} MB: bare Python"
    size = "daemon idle"
    if "checkin_cpu_s" in r:  # with --checkins: the CPU time of one check-in's worker process
        size += f"; {r.get('checkins', '?')} check-ins"
        result += f"; {r['checkin_cpu_s']:g} s CPU per check-in"
        reference += (
            f"; {r['python_start_cpu_s']:g} s CPU to start Python, "
            f"{r['worker_imports_cpu_s']:g} s with the worker's imports"
        )
    return Row(
        size=size,
        result=result,
        reference=reference,
        ratio=_number(r["ratio_to_bare_python"], 2),
        target="≤ 30 MB RSS",
        met=_judge(bool(r["within_target"])),
    )


def _enrollment(r: dict[str, Any]) -> Row:
    result = (
        f"{_number(r['enrollments_per_s'])}/s, p50 {_number(r['p50_ms'])} ms, p99 {_number(r['p99_ms'])} ms"
    )
    if r.get("errors"):
        result += f", {r['errors']} errors"
    return Row(
        size=f"{r['devices']:,} devices, {r['concurrency']} connections, {r['backend']}",
        result=result,
        reference=f"{_number(r['ca_certificates_per_s'])}/s: the CA alone "
        f"(refused requests: {_number(r['refused_per_s'])}/s)",
        ratio=_number(r["ratio"], 3),
        target="— (none in DESIGN.md)",
        met="—",
    )


def _other(r: dict[str, Any]) -> Row:
    """A benchmark this module has no row format for (yet): its fields as they are."""
    fields = {key: value for key, value in r.items() if key != "benchmark"}
    reference = {key: value for key, value in fields.items() if key.startswith("reference")}
    result = {key: value for key, value in fields.items() if key not in reference and key != "ratio"}
    return Row(
        size="",
        result=", ".join(f"{key} {value}" for key, value in result.items()),
        reference=", ".join(f"{key} {value}" for key, value in reference.items()) or "—",
        ratio=_number(r.get("ratio"), 2),
        target="—",
        met="—",
    )


# By the "benchmark" field of each JSON line: the row's title, the start of its section's anchor in
# the docs (a section may be renamed "… and more"; a row links to it only if it is there), its format.
FORMATS: dict[str, tuple[str, str, Callable[[dict[str, Any]], Row]]] = {
    "device_checkin": ("device check-ins", "device-check-ins", _checkin),
    "deployment_create": ("deployment creation", "deployment-creation", _deployment_create),
    "artifact_download": ("artifact download", "artifact-download", _artifact_download),
    "dynamic_group": ("dynamic group filter", "dynamic-group-filter", _dynamic_group),
    "audit_verify": ("audit chain verification", "audit-chain-verification", _audit_verify),
    "agent_idle_rss": ("agent idle", "agent-idle-memory", _agent_idle),
    "enrollment": ("enrollment rate", "enrollment-rate", _enrollment),
}
# Titles and sections for benchmarks that failed before printing anything, by the suite's names.
SUITE_TITLES = {
    "checkin": ("device check-ins", "device-check-ins"),
    "deployment_create": ("deployment creation", "deployment-creation"),
    "download": ("artifact download", "artifact-download"),
    "dynamic_group": ("dynamic group filter", "dynamic-group-filter"),
    "audit_verify": ("audit chain verification", "audit-chain-verification"),
    "agent_idle": ("agent idle", "agent-idle-memory"),
    "enrollment": ("enrollment rate", "enrollment-rate"),
}

HEADER = (
    "| benchmark | size | result | reference (same run) | ratio | target (DESIGN.md) | met |\n"
    "|---|---|---|---|---|---|---|"
)


def _cells(row: Row) -> list[str]:
    return [row.size, row.result, row.reference, row.ratio, row.target, row.met]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def slugs(markdown: str) -> list[str]:
    """The anchors of the markdown's headings, as GitHub makes them."""
    found = []
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.append(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def _link(title: str, anchor: str, sections: Sequence[str]) -> str:
    section = next((slug for slug in sections if anchor and slug.startswith(anchor)), None)
    return f"[{title}](#{section})" if section else title


def rows_of(record: dict[str, Any], sections: Sequence[str] = ()) -> list[list[str]]:
    """Table rows for one benchmark of the suite: one per JSON line, or one saying why there is none.
    Titles link to the sections of the docs whose anchors start as expected."""
    command = f"`{record['command']}`"
    if record["status"] != "ok":
        how = (
            "timed out after {:g} s".format(record["timeout_s"])
            if record["status"] == "timeout"
            else "failed"
        )
        error = (record.get("error") or "").splitlines()
        why = f": {error[-1][:160]}" if error else ""
        title, anchor = SUITE_TITLES.get(record["name"], (record["name"], ""))
        lines = [[_link(title, anchor, sections), command, f"**{how}**{why}", "", "", "", "**not measured**"]]
        if not record["results"]:
            return lines
    else:
        lines = []
    for result in record["results"]:
        title, anchor, format_row = FORMATS.get(result.get("benchmark", ""), (record["name"], "", _other))
        try:
            row = format_row(result)
        except (KeyError, TypeError, ValueError):
            row = _other(result)
        lines.append(
            [
                _link(title, anchor, sections),
                f"{row.size}<br>{command}" if row.size else command,
                *_cells(row)[1:],
            ]
        )
    return lines


def machine_line(machine: dict[str, Any]) -> str:
    load = ", ".join(f"{value:g}" for value in machine.get("load_average", []))
    return (
        f"Measured {machine['date'].replace('T', ' ').replace('+00:00', ' UTC')} on {machine['cpu']}, "
        f"{machine['cores']} cores, {machine['ram_gib']:g} GiB RAM; PostgreSQL {machine['postgresql']}, "
        f"SQLite {machine['sqlite']}, Python {machine['python']}, Linux {machine['kernel']}; "
        f"commit {machine['commit']}; load average at the start {load}."
    )


def render(path: Path, docs: str = "") -> str:
    """The markdown that goes between the markers, from one results file; rows link to the
    sections of `docs` (the markdown the table goes into)."""
    sections = slugs(docs)
    machine: dict[str, Any] = {}
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        value = json.loads(line)
        if "machine" in value:
            machine = value["machine"]
        else:
            records.append(value)
    quick = any(record.get("quick") for record in records)
    table = [HEADER]
    for record in records:
        for cells in rows_of(record, sections):
            title, size_and_command, *rest = cells
            table.append("| " + " | ".join(_escape(cell) for cell in [title, size_and_command, *rest]) + " |")
    total = sum(record["seconds"] for record in records)
    parts = [
        f"Generated by `make bench{' BENCH_ARGS=--quick' if quick else ''}` from `{path.name}` "
        f"({len(records)} benchmarks, {total:.0f} s). " + (machine_line(machine) if machine else ""),
    ]
    if quick:
        parts.append("**Quick mode: smoke-test sizes, not measurements.**")
    loads = [record.get("load_after") for record in records if record.get("load_after") is not None]
    if loads and max(loads) > machine.get("cores", 1):
        parts.append(
            f"The host was busy (load average up to {max(loads):g} on {machine.get('cores')} cores): "
            "compare the ratios, not the absolute rates."
        )
    return "\n\n".join([" ".join(parts[:1]), *parts[1:], "\n".join(table)])


def replace_between_markers(text: str, generated: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} and {END} are missing")
    return text[: start + len(BEGIN)] + "\n" + generated + "\n" + text[end:]


def update_docs(docs: Path, results: Path) -> None:
    text = docs.read_text()
    docs.write_text(replace_between_markers(text, render(results, text)))


def newest_results(directory: Path) -> Path:
    found = sorted(directory.glob("*.jsonl"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise SystemExit(f"no results in {directory}: run `make bench` first")
    return found[-1]


def main() -> None:
    from bench.run import DOCS, RESULTS_DIR

    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("results", nargs="?", type=Path, help="a results file (default: the newest)")
    parser.add_argument("--docs", type=Path, default=DOCS)
    parser.add_argument("--print", action="store_true", help="print the table instead of rewriting the docs")
    args = parser.parse_args()
    results = args.results or newest_results(RESULTS_DIR)
    if args.print:
        print(render(results, args.docs.read_text()))
    else:
        update_docs(args.docs, results)


if __name__ == "__main__":
    main()

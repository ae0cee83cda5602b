"""`fleetkeeper-sim`: many simulated devices against a fleetkeeper server on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetkeeper_sim.run import RunOptions, describe_errors, run
from fleetkeeper_sim.state import SimError

MAX_DEVICES = 100_000
MAX_DURATION = 7 * 24 * 3600.0

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
def simulate(
    server: Annotated[str, typer.Option(help="the device listener, https://127.0.0.1:8443 (loopback only)")],
    ca: Annotated[Path, typer.Option(help="the fleet CA certificate (PEM), e.g. <data-dir>/pki/ca.crt")],
    state_dir: Annotated[Path, typer.Option(help="keys, certificates and progress; reused by the next run")],
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETKEEPER_ENROLLMENT_TOKEN", help="enrollment token (auto-accept) for new devices"
        ),
    ] = None,
    devices: Annotated[int, typer.Option(min=0, max=MAX_DEVICES, help="simulated devices")] = 100,
    pending: Annotated[int, typer.Option(min=0, max=1000, help="devices enrolling without the token")] = 0,
    device_type: Annotated[
        list[str] | None, typer.Option("--device-type", help="device types, given in turn [sim]")
    ] = None,
    duration: Annotated[float, typer.Option(min=1, max=MAX_DURATION, help="seconds to run")] = 60.0,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between a device's check-ins")] = 60.0,
    inventory_interval: Annotated[float, typer.Option(min=1, help="seconds between inventories")] = 3600.0,
    failure_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="probability that an install fails")
    ] = 0.0,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="check-ins at once")] = 200,
    enroll_concurrency: Annotated[int, typer.Option(min=1, max=1000, help="enrollments at once")] = 32,
    max_download_bytes: Annotated[int, typer.Option(min=1, help="largest artifact a device downloads")] = 64
    * 1024
    * 1024,
    processes: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    timeout: Annotated[float, typer.Option(min=1, max=600, help="seconds per request")] = 30.0,
    enroll_only: Annotated[
        bool, typer.Option("--enroll-only", help="stop once every device has enrolled (or is pending)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON line instead of tables")] = False,
) -> None:
    options = RunOptions(
        server_url=server,
        ca=ca,
        token=token,
        state_dir=state_dir,
        devices=devices,
        pending=pending,
        device_types=tuple(device_type or ["sim"]),
        duration=duration,
        interval=interval,
        inventory_interval=inventory_interval,
        failure_rate=failure_rate,
        concurrency=concurrency,
        enroll_concurrency=enroll_concurrency,
        max_download_bytes=max_download_bytes,
        processes=processes,
        timeout=timeout,
        enroll_only=enroll_only,
    )
    try:
        report, stats = run(options)
    except SimError as exc:
        typer.echo(f"fleetkeeper-sim: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one while worker processes start
        typer.echo("fleetkeeper-sim: interrupted", err=True)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(report, separators=(",", ":")))
    else:
        _print_summary(report)
    if stats.error_count:
        typer.echo(f"fleetkeeper-sim: {describe_errors(stats)}", err=True)
        raise typer.Exit(1)


def _print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    devices = ", ".join(f"{count} {status}" for status, count in sorted(report["devices"].items()))
    console.print(
        f"[bold]fleetkeeper-sim[/]: {devices or 'no devices'} · {report['duration_s']} s · "
        f"{report['requests']} requests ({report['requests_per_s']}/s) · {report['errors']} errors"
    )
    table = Table("request", "count", "per s", "p50 ms", "p95 ms", "p99 ms", "errors")
    for name, kind in report["kinds"].items():
        table.add_row(
            name,
            str(kind["requests"]),
            str(kind["per_s"]),
            *(str(kind[key]) if kind[key] is not None else "-" for key in ("p50_ms", "p95_ms", "p99_ms")),
            str(kind["errors"]),
        )
    console.print(table)
    if report["events"]:
        console.print("devices: " + ", ".join(f"{name} {count}" for name, count in report["events"].items()))
    for reason, count in report["error_reasons"].items():
        console.print(f"[red]error[/] {reason}: {count}")


def main() -> None:
    app(prog_name="fleetkeeper-sim")


if __name__ == "__main__":
    main()

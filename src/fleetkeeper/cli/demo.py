"""`fleetkeeper demo`: the server with a living fleet — simulated devices of two types, one waiting in
the enrollment queue, a signed release and a phased deployment of it under way. Ctrl-C stops it all.

The server and the simulator run as child processes in sessions of their own, so that Ctrl-C reaches
this process only and it stops them in order (the simulator first, so it reports to a live server).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import typer

from fleetkeeper.cli.demo_setup import (
    DEVICE_TYPES,
    DemoError,
    enrollment_token,
    ensure_deployment,
    install_trust,
    sign_in_demo,
)

BANNER_URL = re.compile(r"^\s+(management|devices):\s+(\S+)")
STOP_TIMEOUT = 20.0


def demo(
    data_dir: Path | None,
    port: int | None,
    device_port: int | None,
    devices: int,
    interval: float,
    duration: float,
) -> None:
    """The options are declared on the command, in cli/main.py."""
    settings = cli.settings_from(
        data_dir=data_dir, port=port, device_port=device_port, device_host="127.0.0.1"
    )
    children: list[subprocess.Popen[Any]] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server, urls = _start_server(settings.data_dir, settings.port, settings.device_port)
        children.append(server)
        management, device = urls["management"], urls["devices"]
        demo_account = sign_in_demo(settings, management)
        keys = install_trust(demo_account)
        token = enrollment_token(demo_account)
        sim_log = demo_account.directory / "sim.log"
        children.insert(
            0, _start_simulator(device, settings.data_dir, token, sim_log, devices, interval, duration)
        )
        typer.echo(f"Simulating {devices} devices and one awaiting approval; waiting for them to enroll…")
        deployment = ensure_deployment(demo_account, keys, devices)
        _print_welcome(management, settings.data_dir, deployment["name"], sim_log)
        _wait(children)
    except DemoError as exc:
        cli.fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("\nstopping the demo…")
    finally:
        _stop(children)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_server(
    data_dir: Path, port: int, device_port: int
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`fleetkeeper serve` with its banner (and on first start the admin's one-time password) shown
    here as it prints it, its log in <data_dir>/demo/server.log."""
    from fleetkeeper.server.serve import BANNER_END

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (data_dir / "demo").mkdir(exist_ok=True, mode=0o700)
    log_path = data_dir / "demo" / "server.log"
    command = [sys.executable, "-m", "fleetkeeper", "serve", "--data-dir", str(data_dir)]
    command += ["--port", str(port), "--device-port", str(device_port), "--device-host", "127.0.0.1"]
    with log_path.open("a") as log:
        server = subprocess.Popen(  # noqa: S603 - this Python, fleetkeeper's own module
            command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
    assert server.stdout is not None
    urls: dict[str, str] = {}
    for line in server.stdout:
        if BANNER_END in line:
            break  # the demo says it once everything runs
        typer.echo(line.rstrip("\n"))
        if match := BANNER_URL.match(line):
            urls[match.group(1)] = match.group(2)
    if server.poll() is not None or len(urls) != 2:
        server.kill()
        server.wait()
        raise DemoError(f"the server did not start:\n{log_path.read_text()[-2000:]}")
    # The rest of its standard output (nothing much) still reaches the terminal.
    threading.Thread(target=_copy, args=(server.stdout,), daemon=True).start()
    return server, urls


def _copy(stream: IO[str]) -> None:
    for line in stream:
        typer.echo(line.rstrip("\n"))


def _start_simulator(
    device_url: str,
    data_dir: Path,
    token: str,
    log_path: Path,
    devices: int,
    interval: float,
    duration: float,
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fleetkeeper_sim", "--server", device_url]
    command += ["--ca", str(data_dir / "pki" / "ca.crt"), "--state-dir", str(data_dir / "demo" / "sim")]
    command += ["--devices", str(devices), "--pending", "1", "--interval", str(interval)]
    command += ["--inventory-interval", "300", "--duration", str(duration)]
    for device_type in DEVICE_TYPES:
        command += ["--device-type", device_type]
    with log_path.open("ab") as log:
        # The token goes through the environment: the command line is visible to every local user.
        return subprocess.Popen(  # noqa: S603 - this Python, fleetkeeper's own module
            command,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "FLEETKEEPER_ENROLLMENT_TOKEN": token},
        )


def _print_welcome(management_url: str, data_dir: Path, deployment: str, sim_log: Path) -> None:
    lines = [
        "",
        "The demo fleet is alive.",
        f"  console:     {management_url}/",
        "  sign in as:  admin, with the one-time password the server printed at its first start",
        f"               (lost? `fleetkeeper users reset-password admin --data-dir {data_dir}`)",
        f"  devices:     simulated ({', '.join(DEVICE_TYPES)}), one waiting in the enrollment queue",
        f"  deployment:  {deployment}: two devices, then three, then the rest once you advance it",
        f"  logs:        {data_dir / 'demo'}/server.log, {sim_log}",
        "",
        "Press Ctrl+C to stop.",
    ]
    typer.echo("\n".join(lines))


def _wait(children: list[subprocess.Popen[Any]]) -> None:
    """Until Ctrl-C, or until a child stops by itself (the server failing, the fleet's duration over)."""
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    stopped = next(child for child in children if child.poll() is not None)
    name = "the server" if stopped is children[-1] else "the simulator"  # the server is started first
    raise DemoError(f"{name} stopped (exit status {stopped.returncode}); its log is in the demo directory")


def _stop(children: list[subprocess.Popen[Any]]) -> None:
    """The simulator first (it reports what it did), then the server; each asked, then made to.
    SIGTERM, not SIGINT: both stop cleanly on it, and a child still importing ends without a traceback."""
    for child in children:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


# Imported last, as in cli/audit.py: cli.main imports this module to register the command.
from fleetkeeper.cli import main as cli  # noqa: E402

"""`serve --device-workers N` on PostgreSQL: N processes accept on the device listener, each
answers real devices, and the workers live and die with the main process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from fleetkeeper.core.config import load_settings
from fleetkeeper.core.db import Database
from fleetkeeper.server.runtime import Runtime, StartupError
from tests.conftest import (
    ClientCertificate,
    RunningServer,
    _drop,
    migrated_postgres_database,
    run_fleetkeeper,
    start_server,
)
from tests.helpers.device_listener import Fleet, signed_in_fleet
from tests.helpers.devices import FakeDevice

WORKERS = 3


@pytest.fixture
def start_with_workers(tmp_path: Path) -> Iterator[Callable[[str], RunningServer]]:
    """Starts servers with WORKERS device processes, each on its own PostgreSQL database."""
    started: list[tuple[RunningServer, str]] = []

    def start(name: str) -> RunningServer:
        url = migrated_postgres_database()
        server = start_server(tmp_path / name, url, env={"FLEETKEEPER_DEVICE_WORKERS": str(WORKERS)})
        started.append((server, url))
        wait_for_workers(server)
        return server

    yield start
    for server, url in started:
        server.stop()
        for pid in worker_pids(server):  # a failed test must not leave workers behind
            _kill(pid)
        asyncio.run(_drop(url))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    url = migrated_postgres_database()
    data_dir = tmp_path_factory.mktemp("workers") / "data"
    server = start_server(data_dir, url, env={"FLEETKEEPER_DEVICE_WORKERS": str(WORKERS)})
    try:
        wait_for_workers(server)
        yield signed_in_fleet(server)
    finally:
        server.stop()
        asyncio.run(_drop(url))


# --- the process tree, from /proc -------------------------------------------------------------


def worker_pids(server: RunningServer) -> list[int]:
    """The server's child processes: its device workers."""
    pid = server.process.pid
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return children


def listening_inodes(port: int) -> set[str]:
    """The listening sockets on the port: one per process (SO_REUSEPORT)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":
                inodes.add(inode)
    assert inodes, f"nothing listens on port {port}"
    return inodes


def holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor).removeprefix("socket:[").removesuffix("]") in inodes:
                return True
        except FileNotFoundError:
            continue
    return False


def accepting_processes(server: RunningServer) -> list[int]:
    """The server's processes holding a listening socket on the device listener's port."""
    inodes = listening_inodes(int(server.device_url.rsplit(":", 1)[1]))
    return [pid for pid in [server.process.pid, *worker_pids(server)] if holds_socket(pid, inodes)]


def wait_for_workers(server: RunningServer, timeout: float = 30) -> list[int]:
    """Waits until every worker says it serves; returns the accepting processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        serving = {
            line.get("worker") for line in log_lines(server) if line["event"] == "device worker serving"
        }
        accepting = accepting_processes(server)
        if len(accepting) == WORKERS and serving >= set(range(1, WORKERS)):
            return accepting
        time.sleep(0.2)
    raise AssertionError(f"workers did not start:\n{_log_tail(server)}")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (its parent is alive but not reaping yet) is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


# --- the server's log -------------------------------------------------------------------------


def log_path(server: RunningServer) -> Path:
    return server.data_dir.parent / f"{server.data_dir.name}.server.log"


def log_lines(server: RunningServer) -> list[dict[str, object]]:
    lines = []
    for line in log_path(server).read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def _log_tail(server: RunningServer) -> str:
    return log_path(server).read_text()[-3000:]


def processes_that_answered(server: RunningServer, request_ids: set[str]) -> set[object]:
    """Which process wrote each request's access line: a worker's number, or None for the main."""
    for _ in range(50):  # the access line is written once the response went out
        lines = [line for line in log_lines(server) if line.get("request_id") in request_ids]
        if len(lines) == len(request_ids):
            break
        time.sleep(0.1)
    return {line.get("worker") for line in lines if line.get("event") == "request"}


# --- devices ----------------------------------------------------------------------------------


def fresh_connection_get(fleet: Fleet, client: ClientCertificate | None, path: str) -> httpx2.Response:
    """One request on a connection of its own (so on whichever process accepts it)."""
    with httpx2.Client(verify=fleet.tls(client), timeout=10) as http:
        return http.get(
            f"{fleet.server.device_url}{path}", headers={"x-request-id": f"workers-{secrets.token_hex(8)}"}
        )


def answered_by_every_process(fleet: Fleet, send: Callable[[], httpx2.Response], most: int = 300) -> int:
    """Sends requests, each on a fresh connection, until every process has answered one; returns
    how many it took. The kernel hands a connection to whichever process accepts first, so a few
    tries may land on the same one."""
    request_ids: set[str] = set()
    for sent in range(1, most + 1):
        response = send()
        assert response.status_code < 300, response.text
        request_ids.add(response.headers["x-request-id"])
        if sent % 10 == 0 and len(processes_that_answered(fleet.server, request_ids)) == WORKERS:
            return sent
    raise AssertionError(f"not every process answered: {processes_that_answered(fleet.server, request_ids)}")


# --- the tests --------------------------------------------------------------------------------


def test_every_process_accepts_and_answers_devices(fleet: Fleet, tmp_path: Path) -> None:
    accepting = accepting_processes(fleet.server)
    assert len(accepting) == WORKERS
    assert accepting[0] == fleet.server.process.pid
    # The banner shows the one real port every process shares.
    assert not fleet.server.device_url.endswith(":0")
    device = FakeDevice()
    files = fleet.accepted(device, tmp_path)
    answered_by_every_process(fleet, lambda: fresh_connection_get(fleet, files, "/device/v1/ping"))
    # A real check-in (the device's director timestamp), and an inventory write, in every process.
    answered_by_every_process(
        fleet, lambda: fresh_connection_get(fleet, files, "/device/v1/director/metadata/timestamp.json")
    )
    assert fleet.put_inventory(files).status_code == 204


def test_a_killed_worker_is_replaced_and_the_listener_keeps_answering(fleet: Fleet, tmp_path: Path) -> None:
    files = fleet.accepted(FakeDevice(), tmp_path)
    victim = worker_pids(fleet.server)[0]
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel queued on the victim's own socket (SO_REUSEPORT) are reset with it;
    # once it has exited, new ones go to the others.
    deadline = time.monotonic() + 10
    while _alive(victim) and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(20):  # the main process and the other worker answer meanwhile
        assert fresh_connection_get(fleet, files, "/device/v1/ping").status_code == 204
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = worker_pids(fleet.server)
        if victim not in workers and len(accepting_processes(fleet.server)) == WORKERS:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the worker was not replaced:\n{_log_tail(fleet.server)}")
    ended = [line for line in log_lines(fleet.server) if str(line["event"]).startswith("device worker ended")]
    assert ended
    assert (ended[-1]["pid"], ended[-1]["exit_code"]) == (victim, -signal.SIGKILL)
    wait_for_workers(fleet.server)
    answered_by_every_process(fleet, lambda: fresh_connection_get(fleet, files, "/device/v1/ping"))


def test_a_revoked_certificate_is_refused_by_every_process(fleet: Fleet, tmp_path: Path) -> None:
    device = FakeDevice()
    files = fleet.accepted(device, tmp_path)
    answered_by_every_process(fleet, lambda: fresh_connection_get(fleet, files, "/device/v1/ping"))
    with fleet.management() as http:
        assert http.post(f"/api/v1/devices/{device.device_id}/decommission").status_code == 200
    # The main process tells its workers at once (well before their own 30 s reload): soon no
    # process lets the certificate through the TLS handshake any more (the ping route does not
    # ask the database, so only the CRL refuses). A busy host may take a moment to deliver.
    deadline = time.monotonic() + 10
    refused_in_a_row = 0
    while refused_in_a_row < 60:
        try:
            fresh_connection_get(fleet, files, "/device/v1/ping")
        except (httpx2.TransportError, ssl.SSLError):
            refused_in_a_row += 1
        else:
            refused_in_a_row = 0
            assert time.monotonic() < deadline, "a process still accepts the revoked certificate"


def test_sigterm_stops_every_process(start_with_workers: Callable[[str], RunningServer]) -> None:
    server = start_with_workers("sigterm")
    workers = worker_pids(server)
    assert len(workers) == WORKERS - 1
    assert server.stop() == 0
    assert not [pid for pid in workers if _alive(pid)]
    stopped = [line for line in log_lines(server) if line["event"] == "device workers stopped"]
    assert [line["count"] for line in stopped] == [WORKERS - 1]


def test_workers_end_when_the_main_process_is_killed(
    start_with_workers: Callable[[str], RunningServer],
) -> None:
    server = start_with_workers("sigkill")
    workers = worker_pids(server)
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 10
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], _log_tail(server)


def test_sqlite_with_several_device_workers_is_refused(tmp_path: Path) -> None:
    result = run_fleetkeeper("serve", "--data-dir", str(tmp_path / "d"), "--device-workers", "2")
    assert result.returncode == 1
    assert "device_workers" in result.stderr
    assert "PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists(), "refused before anything was created"


def test_device_workers_is_bounded(tmp_path: Path) -> None:
    result = run_fleetkeeper("serve", "--data-dir", str(tmp_path / "d"), "--device-workers", "65")
    assert result.returncode == 2
    assert "device_workers (FLEETKEEPER_DEVICE_WORKERS)" in result.stderr


# --- a worker's runtime, in process -----------------------------------------------------------


async def test_a_worker_runtime_loads_what_the_main_process_made_and_writes_nothing(
    runtime: Runtime, tmp_path: Path
) -> None:
    from fleetkeeper.devices.certificates import bump_crl_number, reload_crl
    from fleetkeeper.server.device_workers import decode_settings, encode_settings

    settings = decode_settings(encode_settings(runtime.settings))
    assert settings == runtime.settings
    published = runtime.pki.crl.read_bytes()
    worker = await Runtime.start(settings, primary=False)
    try:
        assert not worker.primary
        assert worker.first_admin_password is None
        assert not worker.created_ca
        assert worker.ca.certificate == runtime.ca.certificate
        assert worker.device_tls.crl_number == runtime.device_tls.crl_number
        async with runtime.database.transaction() as session:
            await bump_crl_number(session)  # a revocation, as the main process would make it
        assert await reload_crl(worker)
        assert worker.device_tls.crl_number == runtime.device_tls.crl_number + 1
        assert runtime.pki.crl.read_bytes() == published, "only the main process writes the file"
        assert await reload_crl(runtime)
        assert runtime.pki.crl.read_bytes() != published
    finally:
        await worker.close()


async def test_a_worker_needs_the_main_process_to_have_started(tmp_path: Path, database: Database) -> None:
    settings = load_settings(data_dir=tmp_path / "empty", database_url=database.url)
    with pytest.raises(StartupError, match="no fleet CA"):
        await Runtime.start(settings, primary=False)
    assert not (tmp_path / "empty").exists()


def test_a_second_server_cannot_join_the_device_port(
    start_with_workers: Callable[[str], RunningServer], tmp_path: Path
) -> None:
    """SO_REUSEPORT lets the workers share the port; it must not let another server (same user)
    share it unnoticed."""
    server = start_with_workers("first")
    port = server.device_url.rsplit(":", 1)[1]
    url = migrated_postgres_database()
    try:
        result = run_fleetkeeper(
            "serve",
            "--data-dir",
            str(tmp_path / "second"),
            "--database-url",
            url,
            "--port",
            "0",
            "--device-host",
            "127.0.0.1",
            "--device-port",
            port,
            "--device-workers",
            "2",
        )
    finally:
        asyncio.run(_drop(url))
    assert result.returncode == 1, result.stderr
    assert "port in use" in result.stderr
    assert len(accepting_processes(server)) == WORKERS

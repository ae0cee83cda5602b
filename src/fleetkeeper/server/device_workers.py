"""Device workers: more processes accepting on the device listener (`device_workers`).

The main process binds the device listener's port, serves it as before, and starts
`device_workers - 1` worker processes (`server/device_worker.py`) that bind the same port
(SO_REUSEPORT): the kernel spreads new connections over the processes, so device TLS handshakes
and check-ins use more than one core. Everything else stays in the main process: the management listener, the
background jobs and the first-start work.

A worker reads the settings from its standard input, a pipe (secrets never appear on a command
line or in another process's environment), and keeps that pipe open: a further line says that the
main process loaded a newer CRL (a revocation), and end of file means that the main process is
gone, even killed, so the worker stops. A worker that exits on its own is logged and
started again after a back-off that grows while it keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

from pydantic import SecretStr

from fleetkeeper.core.config import Settings
from fleetkeeper.core.logging import get_logger
from fleetkeeper.server.runtime import StartupError

log = get_logger(__name__)

WORKER_MODULE = "fleetkeeper.server.device_worker"
LISTEN_BACKLOG = 2048  # uvicorn's default
# A line from the main process to a worker after the settings: load the newer CRL.
CRL_CHANGED = b"crl\n"
RESTART_BACKOFF_FIRST = 1.0
RESTART_BACKOFF_MAX = 30.0
# A worker that ran this long before it ended is restarted after the first back-off again.
RESTARTED_BACKOFF_RESET_AFTER = 60.0
# SIGTERM lets a worker finish its requests; one still running after this is killed.
STOP_TIMEOUT = 10.0


def check_device_workers(settings: Settings) -> None:
    """Refuses settings under which several device processes would go wrong; warns about limits."""
    if settings.device_workers == 1:
        return
    if settings.is_sqlite:
        raise StartupError(
            f"device_workers is {settings.device_workers} (--device-workers, FLEETKEEPER_DEVICE_WORKERS), "
            "but more than one device process needs PostgreSQL: on SQLite the terminal relay lives in "
            "one process and the processes' writes would contend for the database file. Set "
            "database_url to a PostgreSQL database, or device_workers to 1"
        )
    if settings.rate_limit_storage.startswith("memory://"):
        log.warning(
            "rate limits are counted in each device process separately with rate_limit_storage "
            "memory://; use redis:// to count them once for all processes",
            device_workers=settings.device_workers,
        )


def bind_device_socket(settings: Settings, *, joining: bool = False) -> socket.socket:
    """The device listener's listening socket. With device workers, each process binds its own
    socket to the same port with SO_REUSEPORT, and the kernel spreads new connections evenly
    over them (one socket shared by all would go mostly to whichever process woke first). The
    main process binds first, so port 0 yields one real port that the workers then `join`."""
    port = settings.device_port
    reuse_port = settings.device_workers > 1
    if reuse_port and not joining:
        # SO_REUSEPORT would also let this server join another one's port unnoticed (same user):
        # a plain bind first fails if anyone holds it, and picks the real port for port 0.
        with _bound(settings.device_host, port, reuse_port=False) as probe:
            port = probe.getsockname()[1]
            probe.close()
    with _bound(settings.device_host, port, reuse_port=reuse_port) as sock:
        sock.listen(LISTEN_BACKLOG)
        return sock


@contextlib.contextmanager
def _bound(host: str, port: int, *, reuse_port: bool) -> Iterator[socket.socket]:
    """A socket bound to the address, closed if what follows fails."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        yield sock
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"the device listener cannot listen on {host}:{port} ({exc.strerror}): "
            "is the port in use? Choose another with --device-port (FLEETKEEPER_DEVICE_PORT)"
        ) from None


def encode_settings(settings: Settings) -> bytes:
    """One JSON line with every setting, secrets included (it only travels through a pipe)."""
    values: dict[str, Any] = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values[name] = value.get_secret_value()
    return json.dumps(values).encode() + b"\n"


def decode_settings(line: bytes) -> Settings:
    """The main process's settings as they are: validated again, but not merged with this
    process's environment or configuration file (model_validate reads neither)."""
    return Settings.model_validate(json.loads(line))


class DeviceWorkers:
    """Starts, restarts and stops the worker processes of one server."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._settings_line = b""
        self._count = settings.device_workers - 1
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    def stopping(self) -> None:
        """The server is stopping (a signal): a worker that ends from now on is not restarted —
        under systemd the workers get the same SIGTERM and may well end before `stop`."""
        self._stopping = True

    def start(self, device_port: int) -> None:
        """Starts the workers on the port the main process bound (a real one when the setting was 0)."""
        if self._stopping:
            return
        self._settings_line = encode_settings(self._settings.model_copy(update={"device_port": device_port}))
        self._supervisors = [
            asyncio.create_task(self._keep_running(number)) for number in range(1, self._count + 1)
        ]

    def crl_changed(self, number: int) -> None:
        """Tells every worker that the CRL changed (a revocation in this process), so that it
        reloads its own now rather than at its next periodic check."""
        for process in self._processes.values():
            if process.stdin is not None and not process.stdin.is_closing():
                process.stdin.write(CRL_CHANGED)

    async def stop(self) -> None:
        """SIGTERM to every worker, and a wait for all of them (killed after STOP_TIMEOUT)."""
        self._stopping = True
        for supervisor in self._supervisors:
            supervisor.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        processes = list(self._processes.values())
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(process.wait() for process in processes)), STOP_TIMEOUT)
        except TimeoutError:
            for process in processes:
                if process.returncode is None:
                    log.warning("device worker did not stop in time; killing it", pid=process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(process.wait() for process in processes))
        self._processes.clear()
        if processes:
            log.info("device workers stopped", count=len(processes))

    async def _keep_running(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = RESTART_BACKOFF_FIRST
        while not self._stopping:
            started = loop.time()
            exit_code: int | None = None
            pid: int | None = None
            try:
                process = await self._spawn(number)
            except Exception as exc:  # whatever it was, the supervisor must go on trying
                log.error("device worker could not be started", worker=number, error=str(exc))
            else:
                pid = process.pid
                exit_code = await process.wait()
                del self._processes[number]
            if self._stopping:
                return
            if loop.time() - started >= RESTARTED_BACKOFF_RESET_AFTER:
                backoff = RESTART_BACKOFF_FIRST
            log.error(
                "device worker ended unexpectedly; starting it again",
                worker=number,
                pid=pid,
                exit_code=exit_code,
                restart_in_seconds=backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def _spawn(self, number: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER_MODULE,
            "--worker",
            str(number),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            # Its own process group: a Ctrl+C in the terminal reaches the main process only,
            # which stops the workers itself.
            start_new_session=True,
        )
        self._processes[number] = process
        assert process.stdin is not None
        process.stdin.write(self._settings_line)
        with contextlib.suppress(ConnectionError):  # it died at once: _keep_running sees it
            await process.stdin.drain()
        log.info("device worker started", worker=number, pid=process.pid)
        return process

"""`fleetkeeper serve`: both listeners in one event loop, stopped together on SIGINT/SIGTERM, and
with `device_workers` above 1 the device listener's worker processes (server/device_workers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Generator
from typing import Any

import httpx2
import uvicorn
import uvloop

import fleetkeeper
from fleetkeeper.access.service import FIRST_ADMIN_USERNAME
from fleetkeeper.core.config import Settings
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.jobs import every, once_across_replicas
from fleetkeeper.core.logging import get_logger
from fleetkeeper.core.tls import (
    TLSHttpProtocol,
    TLSWebSocketProtocol,
    management_ssl_context,
)
from fleetkeeper.server.app import create_device_app, create_management_app
from fleetkeeper.server.device_workers import DeviceWorkers, bind_device_socket, check_device_workers
from fleetkeeper.server.runtime import Runtime, StartupError

log = get_logger(__name__)

BANNER_END = "Press Ctrl+C to stop."


class Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve`, which stops both listeners together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn ends the whole process with SystemExit when it cannot bind; here the other
        # listener must stop too and the operator must read why, so the failure is turned into
        # a stop that `serve` reports.
        try:
            await super().startup(sockets)
        except SystemExit:
            self.should_exit = True
            return
        _freeze_startup_heap()

    def bound_port(self) -> int:
        port: int = self.servers[0].sockets[0].getsockname()[1]
        return port


def _freeze_startup_heap() -> None:
    """Leaves what start-up built (modules, the apps, the settings: most of the process's objects)
    out of the collector's full passes, which otherwise walk all of it again and again while the
    server runs: their pauses are most of the device requests' latency tail (docs/benchmarks.md,
    device check-ins)."""
    gc.collect()
    gc.freeze()


def _context_factory(build: Callable[[], ssl.SSLContext]) -> Callable[[Any, Any], ssl.SSLContext]:
    return lambda config, default_factory: build()


_COMMON_CONFIG: dict[str, Any] = {
    "lifespan": "off",
    "log_config": None,
    "access_log": False,
    "server_header": False,
}


def management_listener_config(runtime: Runtime) -> uvicorn.Config:
    settings = runtime.settings
    management_tls: dict[str, Any] = {}
    if settings.tls_cert and settings.tls_key:
        cert, key = settings.tls_cert, settings.tls_key
        management_tls["ssl_context_factory"] = _context_factory(lambda: management_ssl_context(cert, key))
    # X-Forwarded-For/-Proto are believed only from the operator's `trusted_proxies` (uvicorn
    # would otherwise believe any local client); devices connect directly, their TLS is ours.
    return uvicorn.Config(
        create_management_app(runtime),
        host=settings.host,
        port=settings.port,
        http="httptools",
        ws="websockets-sansio",
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        **management_tls,
        **_COMMON_CONFIG,
    )


def device_listener_config(runtime: Runtime) -> uvicorn.Config:
    """The device listener, served on a socket bound beforehand (see server/device_workers.py)."""
    return uvicorn.Config(
        create_device_app(runtime),
        http=TLSHttpProtocol,
        ws=TLSWebSocketProtocol,
        ssl_context_factory=_context_factory(lambda: runtime.device_tls.context),
        proxy_headers=False,
        **_COMMON_CONFIG,
    )


# Each process keeps its device listener's CRL current (revocations on other replicas, and the
# CRL's own next-update time); one replica at a time re-signs TUF metadata before it expires.
CRL_RELOAD_INTERVAL = 30.0
METADATA_REFRESH_INTERVAL = 60.0
WEBHOOK_DELIVERY_INTERVAL = 15.0
LIVE_TARGETS_INTERVAL = 15.0  # live deployments take in devices that joined their group
ENROLLMENT_EXPIRY_INTERVAL = 3600.0  # undecided enrollment requests are kept for days


def run(settings: Settings) -> None:
    """`serve` on uvloop's event loop: its transports (TLS included) cost less CPU per request
    than asyncio's own, and uvicorn, asyncpg and the rest run on it unchanged."""
    check_device_workers(settings)
    uvloop.run(serve(settings))


async def serve(settings: Settings) -> None:
    from fleetkeeper.deployments.director.files import refresh_due_metadata
    from fleetkeeper.deployments.live import sync_live_deployments
    from fleetkeeper.deployments.webhooks import deliver_due
    from fleetkeeper.devices.certificates import reload_crl
    from fleetkeeper.devices.enrollment_limits import expire_stale_requests

    runtime = await Runtime.start(settings)
    _print_first_admin(runtime)
    webhook_client = httpx2.AsyncClient(follow_redirects=False)

    async def deliver_webhooks() -> object:
        return await deliver_due(runtime.database, now=utcnow(), client=webhook_client)

    background = [
        asyncio.create_task(every(CRL_RELOAD_INTERVAL, "crl", lambda: reload_crl(runtime))),
        asyncio.create_task(
            every(
                METADATA_REFRESH_INTERVAL,
                "metadata",
                lambda: once_across_replicas(
                    runtime.database, "metadata-refresh", lambda: refresh_due_metadata(runtime)
                ),
            )
        ),
        asyncio.create_task(every(WEBHOOK_DELIVERY_INTERVAL, "webhooks", deliver_webhooks)),
        asyncio.create_task(
            every(
                LIVE_TARGETS_INTERVAL,
                "live-targets",
                lambda: once_across_replicas(
                    runtime.database, "live-targets", lambda: sync_live_deployments(runtime)
                ),
            )
        ),
        asyncio.create_task(
            every(
                ENROLLMENT_EXPIRY_INTERVAL,
                "enrollment-expiry",
                lambda: once_across_replicas(
                    runtime.database, "enrollment-expiry", lambda: expire_stale_requests(runtime)
                ),
            )
        ),
    ]
    device_socket: socket.socket | None = None
    workers = DeviceWorkers(settings) if settings.device_workers > 1 else None
    try:
        device_socket = bind_device_socket(settings)
        management = Listener(management_listener_config(runtime))
        device = Listener(device_listener_config(runtime))
        listeners = [management, device]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop, listeners, workers)
        tasks = [
            asyncio.create_task(management.serve()),
            asyncio.create_task(device.serve(sockets=[device_socket])),
        ]
        while not all(listener.started for listener in listeners):
            if any(task.done() for task in tasks):
                _stop(listeners, workers)
                await asyncio.gather(*tasks)
                # uvicorn has logged why (typically the address is in use); say what to do.
                raise StartupError(
                    f"a listener could not start on {settings.host}:{settings.port}: is the port in use? "
                    "Choose another with --port (FLEETKEEPER_PORT)"
                )
            await asyncio.sleep(0.05)
        if workers is not None:
            runtime.device_tls.crl_loaded_callbacks.append(workers.crl_changed)
            workers.start(device.bound_port())
        _print_banner(runtime, management.bound_port(), device.bound_port())
        await asyncio.gather(*tasks)
    finally:
        if workers is not None:
            await workers.stop()
        if device_socket is not None:
            device_socket.close()
        for task in background:
            task.cancel()
        await webhook_client.aclose()
        await runtime.close()


def _stop(listeners: list[Listener], workers: DeviceWorkers | None) -> None:
    if workers is not None:
        workers.stopping()
    for listener in listeners:
        listener.should_exit = True


def _print_first_admin(runtime: Runtime) -> None:
    """Printed to the terminal once, never logged: it exists nowhere else. Printed before the
    listeners bind, so that a port already in use does not lose it."""
    if not runtime.first_admin_password:
        return
    lines = [
        "First start: an administrator account was created.",
        f"  username:          {FIRST_ADMIN_USERNAME}",
        f"  one-time password: {runtime.first_admin_password}",
        "  It is shown only this once and must be changed at first sign-in.",
        "  (Lost? `fleetkeeper users reset-password admin` makes a new one.)",
        "",
    ]
    print("\n".join(lines), file=sys.stdout, flush=True)


def _print_banner(runtime: Runtime, management_port: int, device_port: int) -> None:
    settings = runtime.settings.model_copy(update={"port": management_port, "device_port": device_port})
    lines = [
        f"fleetkeeper {fleetkeeper.__version__} is running",
        f"  management: {settings.management_url}   (API docs: {settings.management_url}/api/docs)",
        f"  devices:    {settings.device_url}",
        f"  fleet CA:   {runtime.pki.ca_cert.resolve()}",
        f"  data:       {settings.data_dir.resolve()}",
    ]
    lines += ["", BANNER_END]
    print("\n".join(lines), file=sys.stdout, flush=True)
    log.info("listening", management_port=management_port, device_port=device_port)

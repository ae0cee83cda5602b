"""One device worker process: the device listener on the main process's port (SO_REUSEPORT).

Started by `server/device_workers.py` as `python -m fleetkeeper.server.device_worker --worker N`,
with the settings as one JSON line on standard input. It stops on SIGTERM or
SIGINT, and when its standard input ends: the main process is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys

import uvloop

from fleetkeeper.core.config import Settings
from fleetkeeper.core.jobs import every
from fleetkeeper.core.logging import configure_logging, get_logger
from fleetkeeper.server.device_workers import bind_device_socket, decode_settings
from fleetkeeper.server.runtime import Runtime, StartupError
from fleetkeeper.server.serve import CRL_RELOAD_INTERVAL, Listener, device_listener_config

log = get_logger("fleetkeeper.server.device_worker")  # not "__main__" when run with -m

# Once the main process is gone, open connections get this long to finish.
ORPHAN_GRACE = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(prog="fleetkeeper device worker", description=__doc__)
    parser.add_argument("--worker", type=int, required=True, help="this worker's number, for the logs")
    args = parser.parse_args()
    settings = decode_settings(sys.stdin.buffer.readline())
    configure_logging(settings.log_level, settings.log_format, process_fields={"worker": args.worker})
    try:
        uvloop.run(serve_devices(settings, bind_device_socket(settings, joining=True)))
    except StartupError as exc:
        log.error("device worker cannot start", reason=str(exc))
        sys.exit(1)


async def serve_devices(settings: Settings, device_socket: socket.socket) -> None:
    from fleetkeeper.devices.certificates import reload_crl

    runtime = await Runtime.start(settings, primary=False)
    crl_reload = asyncio.create_task(every(CRL_RELOAD_INTERVAL, "crl", lambda: reload_crl(runtime)))
    listener = Listener(device_listener_config(runtime))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop, listener)
    following = asyncio.create_task(_follow_main_process(runtime, listener))
    try:
        log.info("device worker serving", pid=os.getpid())
        await listener.serve(sockets=[device_socket])
    finally:
        for task in (crl_reload, following):
            task.cancel()
        await runtime.close()


def _stop(listener: Listener) -> None:
    listener.should_exit = True


async def _follow_main_process(runtime: Runtime, listener: Listener) -> None:
    """Standard input is the main process's pipe: a line says that it loaded a newer CRL, and the
    pipe's end means that the main process has ended."""
    from fleetkeeper.devices.certificates import reload_crl

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        try:
            await reload_crl(runtime)
        except Exception:
            log.exception("CRL reload failed")
    log.warning("the server's main process is gone; device worker stopping")
    listener.should_exit = True
    await asyncio.sleep(ORPHAN_GRACE)
    listener.force_exit = True


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

"""`fleetkeeper-agent run`: the daemon. It sleeps between check-ins and runs each one in a
short-lived worker process (`run --once`), and keeps the control channel's process
(`fleetkeeper-agent channel`, docs/terminal.md) running beside it.

Why a worker: the TLS client, cryptography and the TUF client take about 28 MB once loaded and
Python never gives that back; a device spends nearly all its life idle, so the daemon holds only
this loop (docs/agent.md, "Memory"). A worker that crashes or leaks takes nothing with it, and the
state on disk tells the next one where to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
from pathlib import Path

from fleetkeeper_agent.config import AgentConfig
from fleetkeeper_agent.update_state import mark_inventory_due

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 10.0
CHANNEL_FIRST_BACKOFF = 1.0
CHANNEL_MAX_BACKOFF = 60.0
# A channel process that ran this long before it died was not crash-looping: restart it at once.
CHANNEL_HEALTHY_SECONDS = 60.0
EXIT_PENDING = 3  # the worker's "enrollment waits for an operator": not an error, no back-off


def next_delay(config: AgentConfig, failures: int) -> float:
    """The check-in interval ± jitter, or after errors 10 s, 20 s, 40 s … up to max_backoff."""
    if failures:
        return float(min(config.max_backoff, FIRST_BACKOFF_SECONDS * 2.0 ** (failures - 1)))
    spread = config.check_in_interval * config.jitter
    return max(1.0, config.check_in_interval + random.uniform(-spread, spread))  # noqa: S311 - not a secret


async def supervise(config: AgentConfig, config_path: Path | None) -> int:
    """Until SIGTERM or SIGINT. A check-in under way is stopped too: every step of it is safe to
    kill (the state written before each step says where the next worker resumes)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The inventory is reported at start: the first worker finds it due.
    mark_inventory_due(config.data_dir)
    command = [sys.executable, "-m", "fleetkeeper_agent", "--data-dir", str(config.data_dir)]
    if config_path is not None:
        command += ["--config", str(config_path)]
    channel = asyncio.create_task(_keep_channel_running([*command, "channel"], stop))
    command += ["run", "--once"]
    failures = 0
    log.info("fleetkeeper-agent running; checking in every %g s", config.check_in_interval)
    while not stop.is_set():
        worker = await asyncio.create_subprocess_exec(*command)
        waiting = asyncio.create_task(worker.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            worker.send_signal(signal.SIGTERM)
            await waiting
        stopping.cancel()
        status = waiting.result()
        failures = 0 if status in (0, EXIT_PENDING) else failures + 1
        if failures:
            log.warning("check-in failed (exit status %s, %d in a row)", status, failures)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=next_delay(config, failures))
    await channel
    log.info("stopped")
    return 0


async def _keep_channel_running(command: list[str], stop: asyncio.Event) -> None:
    """The control channel (`fleetkeeper-agent channel`) in a process of its own, restarted after
    1 s, 2 s, 4 s … up to a minute when it dies; stopped with the daemon."""
    crashes = 0
    while not stop.is_set():
        started = asyncio.get_running_loop().time()
        process = await asyncio.create_subprocess_exec(*command)
        waiting = asyncio.create_task(process.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not waiting.done():
            process.send_signal(signal.SIGTERM)
            await waiting
            return
        ran = asyncio.get_running_loop().time() - started
        crashes = 0 if ran > CHANNEL_HEALTHY_SECONDS else crashes + 1
        delay = min(CHANNEL_MAX_BACKOFF, CHANNEL_FIRST_BACKOFF * 2.0 ** max(0, crashes - 1))
        log.warning(
            "the control channel stopped (exit status %s); restarting in %g s", waiting.result(), delay
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)

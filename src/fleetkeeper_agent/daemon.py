"""`fleetkeeper-agent run`: enroll if needed, then check in on an interval with jitter (exponential
back-off after errors), renew the certificate when due, report inventory at start, after every
commit and on an interval, and drive updates (updates.UpdateFlow).

The loop is asyncio so that a signal ends it at once between steps; the work itself (TLS, files,
update modules) is blocking and runs in a worker thread, one step at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from fleetkeeper_agent.client import DeviceClient, tls_context
from fleetkeeper_agent.config import AgentConfig
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import write_atomic
from fleetkeeper_agent.identity import (
    DeviceIdentity,
    IdentityState,
    enroll,
    renew,
    renewal_due,
    report_inventory,
)
from fleetkeeper_agent.inventory import collect_inventory
from fleetkeeper_agent.keystore import FileKeyStore
from fleetkeeper_agent.update_state import UpdateState

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 10.0
TRUST_DIR = "tuf"


@dataclass
class _Schedule:
    failures: int = 0
    next_inventory: float = 0.0  # monotonic; 0: due now

    def delay(self, config: AgentConfig) -> float:
        if self.failures:
            return float(min(config.max_backoff, FIRST_BACKOFF_SECONDS * 2.0 ** (self.failures - 1)))
        spread = config.check_in_interval * config.jitter
        return max(1.0, config.check_in_interval + random.uniform(-spread, spread))  # noqa: S311 - not a secret


async def run(config: AgentConfig, *, stop: asyncio.Event | None = None, once: bool = False) -> int:
    """Until SIGTERM/SIGINT (or `stop`); with `once`, one check-in (exit status 1 if it failed)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    install_trusted_roots(config)
    schedule = _Schedule()
    while not stop.is_set():
        try:
            state = await asyncio.to_thread(_ensure_enrolled, config)
            if state is not None:
                await asyncio.to_thread(_check_in, config, state, schedule)
                schedule.failures = 0
        except AgentError as exc:
            schedule.failures += 1
            log.error("check-in failed (%d in a row): %s", schedule.failures, exc)
        except Exception:
            # A bug must not stop the device from checking in: the state on disk says where to resume.
            schedule.failures += 1
            log.exception("check-in failed (%d in a row) on an unexpected error", schedule.failures)
        if once:
            return 1 if schedule.failures else 0
        delay = schedule.delay(config)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
    log.info("stopped")
    return 0


def _ensure_enrolled(config: AgentConfig) -> IdentityState | None:
    """The accepted identity; enrolls (once per call) from [enrollment] when there is none yet."""
    store = FileKeyStore(config.data_dir)
    state = IdentityState.load(config.data_dir)
    if state is not None and state.status == "accepted" and store.load_certificate() is not None:
        return state
    wanted = config.enrollment
    server_url = wanted.server_url or (state.server_url if state else None)
    device_type = wanted.device_type or (state.device_type if state else None)
    if server_url is None or device_type is None or wanted.ca is None:
        raise AgentError(
            "not_enrolled",
            "no identity yet: run `fleetkeeper-agent enroll`, or set server_url, ca and device_type in "
            "[enrollment] of the configuration",
        )
    try:
        identity = DeviceIdentity(device_type, wanted.serial, wanted.mac, wanted.attributes)
    except ValueError as exc:
        raise AgentError("invalid_config", f"enrollment: {exc}") from None
    token = wanted.token_file.read_text(encoding="utf-8").strip() if wanted.token_file else None
    result = enroll(store, server_url, wanted.ca, identity, token=token)
    IdentityState(server_url.rstrip("/"), result.device_id, device_type, result.status).save(config.data_dir)
    if result.status == "pending":
        log.info("enrollment of %s waits for an operator's approval", result.device_id)
        return None
    log.info("enrolled as %s", result.device_id)
    return IdentityState.load(config.data_dir)


def _check_in(config: AgentConfig, identity: IdentityState, schedule: _Schedule) -> None:
    from fleetkeeper_agent.updates import UpdateFlow
    from fleetkeeper_agent.uptane import UpdateChecker

    store = FileKeyStore(config.data_dir)
    certificate = store.load_certificate()
    if certificate is not None and renewal_due(certificate):
        renewed = renew(store, identity.server_url)
        log.info("certificate renewed, valid until %s", renewed.not_after.isoformat())
    ca_pem = store.load_ca_pem()
    assert ca_pem is not None  # an accepted identity has it
    context = tls_context(ca_pem, store)
    if time.monotonic() >= schedule.next_inventory:
        send_inventory(config, identity)
        schedule.next_inventory = time.monotonic() + config.inventory_interval
    if not (config.data_dir / TRUST_DIR / "director" / "root.json").exists():
        raise AgentError(
            "not_initialized",
            "no trusted roots: set image_root and director_root in [trust], or run `fleetkeeper-agent trust`",
        )
    checker = UpdateChecker(
        config.data_dir / TRUST_DIR, identity.server_url, context, identity.device_id, identity.device_type
    )
    with DeviceClient(identity.server_url, context) as client:
        result = UpdateFlow(config, client, checker).tick()
    if result.committed:
        send_inventory(config, identity)


def send_inventory(config: AgentConfig, identity: IdentityState) -> None:
    installed = UpdateState.load(config.data_dir).installed
    release: dict[str, str | int] = {}
    if installed.name and installed.version:
        release = {
            "name": installed.name,
            "version": installed.version,
            "release_counter": installed.release_counter,
        }
    document = collect_inventory(identity.device_type, config.enrollment.attributes, release)
    report_inventory(FileKeyStore(config.data_dir), identity.server_url, document)


def install_trusted_roots(
    config: AgentConfig, *, image: Path | None = None, director: Path | None = None
) -> None:
    """Copies the roots provisioned with the device into the data directory, once: afterwards the
    TUF client moves on by itself, through chained root versions. Replacing a trusted root is not
    something a configuration change may do silently."""
    explicit = image is not None or director is not None
    for name, source in (
        ("image", image or config.image_root),
        ("director", director or config.director_root),
    ):
        target = config.data_dir / TRUST_DIR / name / "root.json"
        if source is None:
            continue
        if target.exists():
            if explicit:
                raise AgentError(
                    "already_initialized", f"{target} exists; the client updates it from the server itself"
                )
            continue
        try:
            content = source.read_bytes()
            kind = json.loads(content)["signed"]["_type"]
        except OSError as exc:
            raise AgentError("invalid_root", f"{source}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError):
            raise AgentError("invalid_root", f"{source}: not TUF root metadata") from None
        if kind != "root":
            raise AgentError("invalid_root", f"{source}: {kind} metadata, not root")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(target, content)

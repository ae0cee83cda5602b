"""One check-in, as the daemon's worker process runs it (`fleetkeeper-agent run --once`): enroll if
needed, renew the certificate when due, report inventory when due (at the first check-in, after
every commit, then on the configured interval) and drive the update flow (updates.UpdateFlow).
"""

from __future__ import annotations

import json
import logging
import time
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
from fleetkeeper_agent.update_state import INVENTORY_SENT, UpdateState

log = logging.getLogger(__name__)

TRUST_DIR = "tuf"
EXIT_PENDING = 3


def check_in_once(config: AgentConfig) -> int:
    """0: done; 3: enrollment waits for an operator. Errors raise AgentError."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    install_trusted_roots(config)
    identity = _ensure_enrolled(config)
    if identity is None:
        return EXIT_PENDING
    _check_in(config, identity)
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


def _check_in(config: AgentConfig, identity: IdentityState) -> None:
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
    if _inventory_due(config):
        send_inventory(config, identity)
    if not (config.data_dir / TRUST_DIR / "director" / "root.json").exists():
        raise AgentError(
            "not_initialized",
            "no trusted roots: set image_root and director_root in [trust], or run `fleetkeeper-agent trust`",
        )
    checker = UpdateChecker(
        config.data_dir / TRUST_DIR, identity.server_url, context, identity.device_id, identity.device_type
    )
    with DeviceClient(identity.server_url, context) as client:
        UpdateFlow(config, client, checker).tick()
    if _inventory_due(config):  # a commit made it due (also one a killed agent did not report)
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
    (config.data_dir / INVENTORY_SENT).touch()


def _inventory_due(config: AgentConfig) -> bool:
    try:
        sent = (config.data_dir / INVENTORY_SENT).stat().st_mtime
    except FileNotFoundError:
        return True
    return not 0 <= time.time() - sent < config.inventory_interval


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

"""`fleetkeeper-agent`: the device side.

Exit status: 0 done (or nothing was due), 1 an error (printed as `error: <code>: <message>`),
2 a usage error, 3 still waiting for an operator's approval (enroll, rotate-key).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fleetkeeper_agent import __version__
from fleetkeeper_agent.config import DEFAULT_CONFIG, DEFAULT_DATA_DIR, AgentConfig, load_config
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.keytypes import KEY_TYPES, KeyType
from fleetkeeper_agent.update_state import UpdateState

if TYPE_CHECKING:
    from cryptography import x509

    from fleetkeeper_agent.identity import IdentityState
    from fleetkeeper_agent.keystore import FileKeyStore

# The daemon's parent process stays small (docs/agent.md, "Memory"): the identity commands load
# cryptography and the HTTP client only when they run.

EXIT_PENDING = 3

log = logging.getLogger("fleetkeeper_agent")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.explicit_data_dir = args.data_dir
    args.data_dir = args.data_dir or DEFAULT_DATA_DIR
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # The HTTP client narrates every request at info: noise on a device's console and in scripts.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        status: int = args.run(args)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # The data directory unreadable, a disk full: expected on a device, worth a line, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: io_error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return status


# --- arguments ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetkeeper-agent", description="fleetkeeper device agent")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"where the key, certificates and state live (default: the configuration's, {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"the agent's TOML configuration (default {DEFAULT_CONFIG}, if it exists)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser("enroll", help="join the fleet: make a key, ask for a certificate")
    command.add_argument("--server", required=True, help="the device listener, https://host:8443")
    command.add_argument("--ca", required=True, type=Path, help="the fleet CA certificate (PEM)")
    command.add_argument("--device-type", required=True, type=_device_type)
    command.add_argument("--serial")
    command.add_argument("--mac")
    _attribute_option(command)
    command.add_argument("--token", help="a batch enrollment token")
    command.add_argument("--key-type", choices=KEY_TYPES, help="for a new key (default ed25519)")
    command.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="keep asking while the enrollment is pending, for at most this long (default: ask once)",
    )
    command.set_defaults(run=_enroll)

    command = commands.add_parser("renew", help="renew the device certificate when it is due")
    command.add_argument(
        "--if-expiring-within",
        type=_days,
        metavar="DAYS",
        help="renew when less than this is left (default: a third of the validity)",
    )
    command.set_defaults(run=_renew)

    command = commands.add_parser("rotate-key", help="replace the device key and its certificate")
    command.add_argument("--key-type", choices=KEY_TYPES, help="for the new key (default: as the current)")
    command.set_defaults(run=_rotate)

    command = commands.add_parser("inventory", help="print the inventory as JSON, or send it")
    command.add_argument("--send", action="store_true", help="report it to the server")
    command.add_argument("--device-type", type=_device_type, help="default: the enrolled device type")
    _attribute_option(command)
    command.set_defaults(run=_inventory)

    command = commands.add_parser("identity", help="print the device id, certificate subject and expiry")
    command.set_defaults(run=_identity)

    command = commands.add_parser("run", help="the daemon: enroll, check in, update, report")
    command.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="as the global option")
    command.add_argument("--once", action="store_true", help="check in once, do what is due, and exit")
    command.set_defaults(run=_run)

    command = commands.add_parser(
        "channel", help="keep the control channel open (terminal, file transfer); `run` starts it"
    )
    command.set_defaults(run=_channel)

    command = commands.add_parser("install", help="install an offline bundle; commit or roll back after")
    command.add_argument("bundle", type=Path, metavar="BUNDLE")
    command.set_defaults(run=_install)

    command = commands.add_parser("commit", help="health-check and commit an installed offline bundle")
    command.set_defaults(run=_commit)

    command = commands.add_parser("rollback", help="roll back an installed offline bundle")
    command.set_defaults(run=_rollback)

    command = commands.add_parser("status", help="the installed release and any install under way, as JSON")
    command.set_defaults(run=_status)

    command = commands.add_parser("trust", help="store the trusted roots provisioned with the device")
    command.add_argument("--image-root", type=Path, required=True, help="the image repository's root.json")
    command.add_argument("--director-root", type=Path, required=True, help="the director's root.json")
    command.set_defaults(run=_trust)

    command = commands.add_parser("version", help="print the version")
    command.set_defaults(run=_version)

    _tuf_client_parser(commands)
    return parser


def _tuf_client_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`tuf-client [options] init|refresh|download`: its options come before its own subcommand."""
    tuf = commands.add_parser(
        "tuf-client", help="a plain TUF client over HTTP(S): init, refresh, download a target"
    )
    tuf.add_argument("--metadata-dir", required=True, type=Path, help="trusted metadata (ngclient layout)")
    tuf.add_argument("--metadata-url", help="the repository's metadata base URL")
    tuf.add_argument("--target-name", help="the target path to download")
    tuf.add_argument("--target-base-url", help="the repository's targets base URL")
    tuf.add_argument("--target-dir", type=Path, help="where downloaded targets go")
    actions = tuf.add_subparsers(dest="tuf_command", required=True, metavar="ACTION")
    action = actions.add_parser("init", help="trust TRUSTED_ROOT: store it as root.json (no network)")
    action.add_argument("trusted_root", type=Path, metavar="TRUSTED_ROOT")
    action.set_defaults(run=_tuf_init)
    action = actions.add_parser("refresh", help="refresh root, timestamp, snapshot and targets")
    action.set_defaults(run=_tuf_refresh)
    action = actions.add_parser("download", help="refresh, then download --target-name unless cached")
    action.set_defaults(run=_tuf_download)


def _attribute_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--attribute",
        dest="attributes",
        action="append",
        type=_attribute,
        default=[],
        metavar="KEY=VALUE",
        help="an extra attribute (repeatable); keys of A-Z a-z 0-9 _ -",
    )


def _attribute(text: str) -> tuple[str, str]:
    from fleetkeeper_agent.inventory import KEY

    key, sep, value = text.partition("=")
    if not sep or not KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, KEY of 1-64 A-Z a-z 0-9 _ -")
    if len(value) > 1024:
        raise argparse.ArgumentTypeError(f"{key}: at most 1024 characters")
    return key, value


def _device_type(text: str) -> str:
    from fleetkeeper_agent.identity import DeviceIdentity

    try:
        DeviceIdentity(device_type=text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or more seconds")
    return value


def _days(text: str) -> timedelta:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of days") from None
    if not 0 <= value <= 36500:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 to 36500 days")
    return timedelta(days=value)


# --- commands ----------------------------------------------------------------------------------------


def _enroll(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.identity import DeviceIdentity, IdentityState, enroll
    from fleetkeeper_agent.keystore import FileKeyStore

    try:
        identity = DeviceIdentity(args.device_type, args.serial, args.mac, dict(args.attributes))
    except ValueError as exc:
        raise AgentError("invalid_identity", str(exc)) from None
    data_dir: Path = args.data_dir
    key_type: KeyType | None = args.key_type
    result = enroll(
        FileKeyStore(data_dir),
        args.server,
        args.ca,
        identity,
        token=args.token,
        key_type=key_type,
        wait=args.wait,
    )
    IdentityState(args.server.rstrip("/"), result.device_id, args.device_type, result.status).save(data_dir)
    if result.status == "pending":
        print(f"pending: {result.device_id} waits for an operator's approval; run enroll again to ask")
        return EXIT_PENDING
    print(f"enrolled: {result.device_id}, certificate valid until {_time(result.not_after)}")
    return 0


def _renew(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.identity import renew, renewal_due

    store, state, certificate = _enrolled_store(args.data_dir)
    if not renewal_due(certificate, within=args.if_expiring_within):
        print(f"not due: the certificate is valid until {_time(certificate.not_valid_after_utc)}")
        return 0
    result = renew(store, state.server_url)
    print(f"renewed: certificate valid until {_time(result.not_after)}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.identity import rotate_key

    store, state, _ = _enrolled_store(args.data_dir)
    result = rotate_key(store, state.server_url, key_type=args.key_type)
    if result.status == "pending_approval":
        print("pending: the new key waits for an operator's approval; run rotate-key again to fetch it")
        return EXIT_PENDING
    print(f"rotated: new key in use, certificate valid until {_time(result.not_after)}")
    return 0


def _inventory(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.identity import IdentityState, report_inventory
    from fleetkeeper_agent.inventory import collect_inventory

    data_dir: Path = args.data_dir
    try:
        state = IdentityState.load(data_dir)
    except (AgentError, OSError):
        # Printing the inventory works before enrollment, and as a user who cannot read the data dir.
        state = None
    device_type = args.device_type or (state.device_type if state else None)
    document = collect_inventory(device_type, dict(args.attributes))
    if not args.send:
        print(json.dumps(document, indent=2))
        return 0
    store, state, _ = _enrolled_store(data_dir)
    report_inventory(store, state.server_url, document)
    print(f"inventory sent for {state.device_id}")
    return 0


def _identity(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.identity import IdentityState, common_name
    from fleetkeeper_agent.keystore import FileKeyStore

    data_dir: Path = args.data_dir
    state = IdentityState.load(data_dir)
    if state is None:
        raise AgentError("not_enrolled", f"no {data_dir / IdentityState.FILE}; run enroll first")
    certificate = FileKeyStore(data_dir).load_certificate()
    print(f"device id: {state.device_id}")
    print(f"device type: {state.device_type}")
    print(f"server: {state.server_url}")
    if certificate is None:
        print(f"certificate: none yet (enrollment {state.status})")
        return 0
    print(f"subject: {certificate.subject.rfc4514_string()}")
    print(f"not after: {_time(certificate.not_valid_after_utc)}")
    if common_name(certificate) != state.device_id:
        log.warning("the certificate names %s, identity.json %s", common_name(certificate), state.device_id)
    return 0


def _config(args: argparse.Namespace) -> AgentConfig:
    config = load_config(args.config, required=args.config is not None)
    if args.explicit_data_dir is not None:
        config = dataclasses.replace(config, data_dir=args.explicit_data_dir)
    return config


def _run(args: argparse.Namespace) -> int:
    if args.once:
        from fleetkeeper_agent.checkin import check_in_once

        return check_in_once(_config(args))
    import asyncio

    from fleetkeeper_agent.supervisor import supervise

    return asyncio.run(supervise(_config(args), args.config))


def _channel(args: argparse.Namespace) -> int:
    import asyncio

    from fleetkeeper_agent.channel import run_channel

    return asyncio.run(run_channel(_config(args)))


def _install(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.offline import install_bundle

    state = install_bundle(_config(args), args.bundle)
    if state.phase == "awaiting_commit":
        print(f"installed {state.target_path}: run `fleetkeeper-agent commit` (or `rollback`)")
    elif state.phase == "rebooting" and state.reboot_error is not None:
        raise AgentError(
            "reboot_failed", f"installed {state.target_path}, but the reboot failed: {state.reboot_error}"
        )
    elif state.phase in ("rebooting", "rolling_back_rebooting"):
        print(f"installed {state.target_path}: rebooting; commit (or roll back) after the reboot")
    elif state.phase == "rolling_back":
        raise AgentError(
            "install_failed",
            f"{state.detail}; rollback failed: {state.rollback_error} "
            "(run `fleetkeeper-agent rollback` again)",
        )
    else:
        raise AgentError("install_failed", state.detail or f"the install ended in {state.phase}")
    return 0


def _commit(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.offline import commit_offline

    installed = commit_offline(_config(args))
    print(f"committed {installed.name} {installed.version}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.offline import rollback_offline

    state = rollback_offline(_config(args))
    if state.phase == "rolling_back_rebooting":
        print("rolling back: rebooting into the previous release")
    else:
        running = (
            f"{state.installed.name} {state.installed.version}" if state.installed.name else "the old release"
        )
        print(f"rolled back; {running} runs")
    return 0


def _status(args: argparse.Namespace) -> int:
    state = UpdateState.load(_config(args).data_dir)
    print(
        json.dumps(
            {
                "installed": dataclasses.asdict(state.installed),
                "phase": state.phase,
                "target_path": state.target_path,
                "deployment_id": state.deployment_id,
                "reports_pending": len(state.outbox),
                "detail": state.detail,
                # A reboot, an activation check, a commit or a rollback that failed, tried again at the
                # next check-ins.
                "reboot_attempts": state.reboot_attempts,
                "reboot_error": state.reboot_error,
                "activation_attempts": state.activation_attempts,
                "activation_error": state.activation_error,
                "commit_attempts": state.commit_attempts,
                "commit_error": state.commit_error,
                "rollback_attempts": state.rollback_attempts,
                "rollback_error": state.rollback_error,
                # An install the agent gave up rolling back: what ran before may not be back.
                "failed_rollback": (
                    dataclasses.asdict(state.failed_rollback) if state.failed_rollback else None
                ),
            },
            indent=2,
        )
    )
    return 0


def _trust(args: argparse.Namespace) -> int:
    from fleetkeeper_agent.checkin import install_trusted_roots

    install_trusted_roots(_config(args), image=args.image_root, director=args.director_root)
    print("trusted roots stored")
    return 0


def _version(args: argparse.Namespace) -> int:
    print(__version__)
    return 0


def _tuf_init(args: argparse.Namespace) -> int:
    from fleetkeeper_agent import tuf_client  # tuf is loaded only by the commands that need it

    tuf_client.init(args.metadata_dir, args.trusted_root)
    return 0


def _tuf_refresh(args: argparse.Namespace) -> int:
    from fleetkeeper_agent import tuf_client

    tuf_client.refresh(args.metadata_dir, _required(args, "metadata_url"))
    return 0


def _tuf_download(args: argparse.Namespace) -> int:
    from fleetkeeper_agent import tuf_client

    path, fetched = tuf_client.download(
        args.metadata_dir,
        _required(args, "metadata_url"),
        _required(args, "target_name"),
        _required(args, "target_base_url"),
        Path(_required(args, "target_dir")),
    )
    print(f"{'downloaded' if fetched else 'up to date'}: {path}")
    return 0


def _required(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, name)
    if value is None:
        raise AgentError("usage", f"tuf-client {args.tuf_command} needs --{name.replace('_', '-')}")
    return str(value)


def _enrolled_store(data_dir: Path) -> tuple[FileKeyStore, IdentityState, x509.Certificate]:
    from fleetkeeper_agent.identity import IdentityState
    from fleetkeeper_agent.keystore import FileKeyStore

    state = IdentityState.load(data_dir)
    store = FileKeyStore(data_dir)
    certificate = store.load_certificate()
    if state is None or certificate is None:
        raise AgentError("not_enrolled", f"no certificate in {data_dir}; run enroll first")
    return store, state, certificate


def _time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "unknown"

"""agent.toml: what the device owner decides. Every key is optional except where `run` needs it;
an unknown key or a wrong type stops the agent with the key's name, before it does anything."""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetkeeper_agent.errors import AgentError

DEFAULT_CONFIG = Path("/etc/fleetkeeper/agent.toml")
DEFAULT_DATA_DIR = Path("/var/lib/fleetkeeper-agent")


@dataclass(frozen=True)
class EnrollmentConfig:
    """Used by `run` when the device has no identity yet."""

    server_url: str | None = None
    ca: Path | None = None
    device_type: str | None = None
    serial: str | None = None
    mac: str | None = None
    token_file: Path | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TerminalConfig:
    """[terminal]: remote terminal and file transfer (docs/terminal.md)."""

    enabled: bool = True
    # The login shell runs as this user when the agent runs as root; otherwise as the agent's user.
    user: str = "fleetkeeper-terminal"
    shell: str | None = None  # default: the user's login shell
    idle_timeout: float = 900.0
    max_session_seconds: float = 4 * 3600.0
    max_sessions: int = 4
    # Directories files may be uploaded to and downloaded from; none: file transfer is off.
    file_roots: tuple[Path, ...] = ()
    max_file_bytes: int = 64 * 1024**2


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)
    # Trusted roots provisioned with the device: copied into the data directory on first start.
    image_root: Path | None = None
    director_root: Path | None = None
    check_in_interval: float = 300.0
    jitter: float = 0.2  # ± this fraction of the interval, so that a fleet does not check in in step
    max_backoff: float = 3600.0
    inventory_interval: float = 3600.0
    busy_command: list[str] | None = None
    health_commands: list[list[str]] = field(default_factory=list)
    health_timeout: float = 120.0
    reboot_command: list[str] = field(default_factory=lambda: ["systemctl", "reboot"])
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    terminal: TerminalConfig = field(default_factory=TerminalConfig)


# The range each number may take.
_BOUNDS = {
    "check_in_interval": (1.0, 7 * 86400.0),
    "jitter": (0.0, 0.9),
    "max_backoff": (1.0, 7 * 86400.0),
    "inventory_interval": (60.0, 30 * 86400.0),
    "health_timeout": (1.0, 86400.0),
    "idle_timeout": (1.0, 7 * 86400.0),
    "max_session_seconds": (1.0, 30 * 86400.0),
    "max_sessions": (0, 1000),
    "max_file_bytes": (0, 2**40),
}


def load_config(path: Path | None, *, required: bool = False) -> AgentConfig:
    """The configuration at `path` (default /etc/fleetkeeper/agent.toml; absent is fine unless
    `required`)."""
    path = path or DEFAULT_CONFIG
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise AgentError("invalid_config", f"{path}: no such file") from None
        return AgentConfig()
    except tomllib.TOMLDecodeError as exc:
        raise AgentError("invalid_config", f"{path}: {exc}") from None
    try:
        return _parse(raw, base=path.parent)
    except _InvalidConfigError as exc:
        raise AgentError("invalid_config", f"{path}: {exc}") from None


class _InvalidConfigError(Exception):
    pass


def _parse(raw: dict[str, Any], *, base: Path) -> AgentConfig:
    known = {
        "data_dir",
        "enrollment",
        "trust",
        "check_in",
        "inventory",
        "install",
        "modules",
        "terminal",
    }
    _no_unknown("", raw, known)
    values: dict[str, Any] = {}
    if "data_dir" in raw:
        values["data_dir"] = _path(raw, "data_dir", base)
    enrollment = _table(raw, "enrollment")
    _no_unknown(
        "enrollment.",
        enrollment,
        {"server_url", "ca", "device_type", "serial", "mac", "token_file", "attributes"},
    )
    attributes = _table(enrollment, "attributes", "enrollment.")
    if not all(isinstance(value, str) for value in attributes.values()):
        raise _InvalidConfigError("enrollment.attributes: values are strings")
    values["enrollment"] = EnrollmentConfig(
        server_url=_string(enrollment, "server_url", "enrollment."),
        ca=_path(enrollment, "ca", base, "enrollment."),
        device_type=_string(enrollment, "device_type", "enrollment."),
        serial=_string(enrollment, "serial", "enrollment."),
        mac=_string(enrollment, "mac", "enrollment."),
        token_file=_path(enrollment, "token_file", base, "enrollment."),
        attributes=dict(attributes),
    )
    trust = _table(raw, "trust")
    _no_unknown("trust.", trust, {"image_root", "director_root"})
    values["image_root"] = _path(trust, "image_root", base, "trust.")
    values["director_root"] = _path(trust, "director_root", base, "trust.")
    check_in = _table(raw, "check_in")
    _no_unknown("check_in.", check_in, {"interval", "jitter", "max_backoff"})
    for key, name in (
        ("interval", "check_in_interval"),
        ("jitter", "jitter"),
        ("max_backoff", "max_backoff"),
    ):
        if key in check_in:
            values[name] = _number(check_in[key], f"check_in.{key}", name)
    inventory = _table(raw, "inventory")
    _no_unknown("inventory.", inventory, {"interval"})
    if "interval" in inventory:
        values["inventory_interval"] = _number(
            inventory["interval"], "inventory.interval", "inventory_interval"
        )
    install = _table(raw, "install")
    _no_unknown(
        "install.",
        install,
        {"busy_command", "health_commands", "health_timeout", "reboot_command", "boot_id_file"},
    )
    if "busy_command" in install:
        values["busy_command"] = _command(install["busy_command"], "install.busy_command")
    if "health_commands" in install:
        commands = install["health_commands"]
        if not isinstance(commands, list):
            raise _InvalidConfigError("install.health_commands: a list of commands")
        values["health_commands"] = [
            _command(command, f"install.health_commands[{index}]") for index, command in enumerate(commands)
        ]
    if "health_timeout" in install:
        values["health_timeout"] = _number(
            install["health_timeout"], "install.health_timeout", "health_timeout"
        )
    if "reboot_command" in install:
        values["reboot_command"] = _command(install["reboot_command"], "install.reboot_command")
    if "boot_id_file" in install:
        values["boot_id_file"] = _path(install, "boot_id_file", base, "install.")
    modules = _table(raw, "modules")
    for name, settings in modules.items():
        if not isinstance(settings, dict):
            raise _InvalidConfigError(f"modules.{name}: a table")
    values["modules"] = {name: dict(settings) for name, settings in modules.items()}
    values["terminal"] = _terminal(_table(raw, "terminal"), base)
    return AgentConfig(**values)


def _terminal(table: dict[str, Any], base: Path) -> TerminalConfig:
    _no_unknown(
        "terminal.",
        table,
        {
            "enabled",
            "user",
            "shell",
            "idle_timeout",
            "max_session_seconds",
            "max_sessions",
            "file_roots",
            "max_file_bytes",
        },
    )
    values: dict[str, Any] = {}
    if "enabled" in table:
        if not isinstance(table["enabled"], bool):
            raise _InvalidConfigError("terminal.enabled: true or false")
        values["enabled"] = table["enabled"]
    for key in ("user", "shell"):
        value = _string(table, key, "terminal.")
        if value is not None:
            values[key] = value
    for key in ("idle_timeout", "max_session_seconds"):
        if key in table:
            values[key] = _number(table[key], f"terminal.{key}", key)
    for key in ("max_sessions", "max_file_bytes"):
        if key in table:
            if not isinstance(table[key], int):
                raise _InvalidConfigError(f"terminal.{key}: a whole number")
            values[key] = int(_number(table[key], f"terminal.{key}", key))
    if "file_roots" in table:
        roots = table["file_roots"]
        if not isinstance(roots, list) or not all(isinstance(root, str) and root for root in roots):
            raise _InvalidConfigError("terminal.file_roots: a list of directories")
        values["file_roots"] = tuple(base / Path(root).expanduser() for root in roots)
    return TerminalConfig(**values)


def _no_unknown(prefix: str, table: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise _InvalidConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")


def _table(raw: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise _InvalidConfigError(f"{prefix}{key}: a table")
    return value


def _string(raw: dict[str, Any], key: str, prefix: str = "") -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _InvalidConfigError(f"{prefix}{key}: a non-empty string")
    return value


def _path(raw: dict[str, Any], key: str, base: Path, prefix: str = "") -> Path | None:
    value = _string(raw, key, prefix)
    return None if value is None else base / Path(value).expanduser()


def _number(value: Any, where: str, name: str) -> float:
    low, high = _BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _InvalidConfigError(f"{where}: a number from {low:g} to {high:g}")
    return float(value)


def _command(value: Any, where: str) -> list[str]:
    """A command as a list of arguments, or as one string split like a shell would (no shell runs)."""
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, list) or not value or not all(isinstance(part, str) for part in value):
        raise _InvalidConfigError(f"{where}: a command, as a string or a list of strings")
    return list(value)

"""The contract between the update daemon and an update module, and the helpers every module shares.

The daemon calls `install`, then (after a reboot if `install` asked for one) `activated`, then
`commit` or `rollback`. Any call may be cut short by a power loss or a SIGKILL and is then made
again, from the start, with the same context: every method must be idempotent, and what `install`
changed must stay undoable by `rollback` until `commit`. Modules keep what they need for that (a
journal, backups) in `work_dir`, which survives restarts and belongs to this one install.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import write_atomic

OUTPUT_TAIL_CHARS = 2000
DEFAULT_COMMAND_TIMEOUT = 600.0


@dataclass(frozen=True)
class InstallContext:
    release: Mapping[str, Any]  # signed custom fields: name, version, release_counter, module, payload, ...
    payload: Path  # the verified payload file (hashes already checked)
    work_dir: Path  # private to this install; survives restarts; deleted after commit or rollback
    settings: Mapping[str, Any]  # this module's table of the agent configuration, e.g. [modules.file]

    @property
    def release_name(self) -> str:
        return str(self.release.get("name", ""))

    @property
    def release_version(self) -> str:
        return str(self.release.get("version", ""))

    @property
    def payload_length(self) -> int | None:
        """The signed payload length, when the release carries one."""
        payload = self.release.get("payload")
        length = payload.get("length") if isinstance(payload, Mapping) else None
        return length if isinstance(length, int) and not isinstance(length, bool) else None

    @property
    def payload_name(self) -> str:
        """The payload's file name as signed (`payload/<file>`), else the verified file's own name."""
        payload = self.release.get("payload")
        path = payload.get("path") if isinstance(payload, Mapping) else None
        name = path.rsplit("/", 1)[-1] if isinstance(path, str) else self.payload.name
        if name in ("", ".", "..") or "/" in name or "\x00" in name:
            raise AgentError("install_failed", f"the payload name {name!r} is not a plain file name")
        return name


class UpdateModule(ABC):
    """One way of installing a payload. Subclasses read and check their settings in `__init__`, so a
    mistake in the configuration shows when the agent starts, not in the middle of an update."""

    name: ClassVar[str]

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: Mapping[str, Any] = dict(settings or {})

    @abstractmethod
    def install(self, ctx: InstallContext) -> bool:
        """Install the payload; True when a reboot is needed to activate it."""

    def activated(self, ctx: InstallContext) -> bool:
        """After the reboot `install` asked for: is the new release the one running? An AgentError
        means "cannot tell yet": asked again at the next check-ins, a bounded number of times, after
        which the answer is taken as no; any other exception is a bug, and the install rolled back."""
        return True

    @abstractmethod
    def commit(self, ctx: InstallContext) -> None:
        """Make the installed release permanent; after this, rollback is no longer possible."""

    @abstractmethod
    def rollback(self, ctx: InstallContext) -> bool:
        """Bring back what ran before `install`; True when a reboot is needed to finish going back."""


# --- settings ------------------------------------------------------------------------------------------


class Settings:
    """Typed access to a module's table of the agent configuration, with errors that name the key."""

    def __init__(self, module: str, table: Mapping[str, Any]) -> None:
        self.module = module
        self.table = table

    def _invalid(self, key: str, expected: str) -> AgentError:
        return AgentError("invalid_settings", f"[modules.{self.module}] {key}: expected {expected}")

    def string(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str) or not value:
            raise self._invalid(key, "a non-empty string")
        return value

    def path(self, key: str, default: str | None = None) -> Path:
        path = Path(self.string(key, default))
        if not path.is_absolute():
            raise self._invalid(key, "an absolute path")
        return path

    def number(self, key: str, default: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self._invalid(key, "a positive number")
        return float(value)

    def integer(self, key: str, default: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self._invalid(key, "a positive integer")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self._invalid(key, "true or false")
        return value

    def mode(self, key: str, default: int) -> int:
        """A file mode: an integer (TOML `0o644`) or a string of octal digits (`"0644"`)."""
        value = self.table.get(key, default)
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise self._invalid(key, 'a file mode such as 0o644 or "0644"') from None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
            raise self._invalid(key, 'a file mode such as 0o644 or "0644"')
        return value

    def strings(self, key: str, default: Sequence[str]) -> list[str]:
        value = self.table.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._invalid(key, "a list of strings")
        return list(value)


# --- the journal ---------------------------------------------------------------------------------------


def read_journal(ctx: InstallContext, name: str) -> dict[str, Any] | None:
    """What an earlier (maybe interrupted) call recorded, or None when nothing was recorded yet."""
    path = ctx.work_dir / name
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        # write_journal is atomic, so a torn journal means someone else wrote it.
        raise AgentError("install_failed", f"the journal {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise AgentError("install_failed", f"the journal {path} is not a JSON object")
    return data


def write_journal(ctx: InstallContext, name: str, data: Mapping[str, Any]) -> None:
    """Record `data` durably: written before the change it describes, so a crash leaves it behind."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.work_dir / name, json.dumps(data, sort_keys=True).encode(), mode=0o600)


# --- commands ------------------------------------------------------------------------------------------


def output_tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    output: str  # stdout and stderr as they came, for error messages


def run_command(
    argv: Sequence[str],
    *,
    failure_code: str,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    check: bool = True,
) -> CommandResult:
    """Run `argv` without a shell; raise AgentError(`failure_code`, output tail) when it fails.

    The command gets its own process group: on timeout the whole group is killed, so a script's
    children cannot keep it alive. Output goes to `log_path` when given (kept in work_dir for a
    person to read later), else to a temporary file; stdout alone is returned for parsing.
    """
    command = list(argv)
    if not command:
        raise AgentError(failure_code, "no command given")
    log = log_path.open("ab") if log_path else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(  # noqa: S603 - argv from signed metadata or the device's own config
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            if log:
                log.close()
            code = "module_unavailable" if isinstance(exc, FileNotFoundError) else failure_code
            raise AgentError(code, f"cannot run {command[0]}: {exc.strerror or exc}") from exc
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout_bytes, stderr_bytes = out.read(), err.read()
    if log:
        with log:
            log.write(stdout_bytes + stderr_bytes)
    stdout = stdout_bytes.decode(errors="replace")
    output = stdout + stderr_bytes.decode(errors="replace")
    name = os.path.basename(command[0])
    if timed_out:
        raise AgentError(failure_code, f"{name} did not finish within {timeout:g} s: {output_tail(output)}")
    if check and process.returncode != 0:
        raise AgentError(
            failure_code,
            f"{name} {' '.join(command[1:2])} exited with {process.returncode}: {output_tail(output)}",
        )
    return CommandResult(process.returncode, stdout, output)

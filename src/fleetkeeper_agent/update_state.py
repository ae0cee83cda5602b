"""What the agent must remember across a crash or a power cut: where an install stands, what is
installed, and the reports the server has not acknowledged yet.

Both files are written with fsync and an atomic rename (files.write_atomic) BEFORE the step they
announce starts, so that on start the agent finds the step to resume, never a torn file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import write_atomic

# Its modification time is when the inventory was last reported; absent: report it at the next check-in.
INVENTORY_SENT = "inventory.sent"


def mark_inventory_due(data_dir: Path) -> None:
    """After a commit, the server must hear what runs now, even if the agent is killed before it
    sends the inventory: this is written before the commit's state, and survives restarts."""
    (data_dir / INVENTORY_SENT).unlink(missing_ok=True)


# The install's steps, in order (docs/agent.md, "Updates"). `idle`: nothing under way.
Phase = Literal[
    "idle",
    "downloading",
    "downloaded",
    "installing",
    "rebooting",
    "verifying",
    "committing",
    "rolling_back",
    "rolling_back_rebooting",
    "rollback_failed",  # given up after the last attempt: the record is written, then idle
    "awaiting_commit",
]
PHASES: tuple[Phase, ...] = get_args(Phase)


@dataclass(frozen=True)
class Report:
    """A status report for the deployments API, kept until the server answered it."""

    deployment_id: str
    seq: int
    status: str
    detail: str | None = None


@dataclass(frozen=True)
class Installed:
    """The release this device runs, and the highest release counter it ever installed: a release
    with a lower counter is refused, whatever the server says."""

    name: str | None = None
    version: str | None = None
    target_path: str | None = None
    module: str | None = None
    release_counter: int = 0
    highest_counter: int = 0


@dataclass(frozen=True)
class FailedRollback:
    """An install the agent gave up rolling back: what ran before it may not be back. Shown by
    `fleetkeeper-agent status` until a later release is committed."""

    target_path: str | None
    deployment_id: str | None
    module: str | None
    detail: str  # why the rollback ran, and its last error
    attempts: int
    kept_dir: str | None  # the module's journal and backups, for whoever repairs the device
    at: str  # when the agent gave up (UTC, ISO 8601)


@dataclass(frozen=True)
class UpdateState:
    phase: Phase = "idle"
    deployment_id: str | None = None  # None for an offline install
    target_path: str | None = None
    length: int = 0
    hashes: dict[str, str] = field(default_factory=dict)
    release: dict[str, Any] = field(default_factory=dict)  # the signed custom fields
    release_counter: int = 0
    force: bool = False
    boot_id: str | None = None  # the boot a reboot was asked from: a different one means it happened
    detail: str | None = None  # why a rollback runs (a log tail)
    # Each step tried again at the next check-ins (update_failures.py): its attempts, counted as each
    # starts, and its last error, which once set means that the server has heard of the failure.
    reboot_attempts: int = 0
    reboot_error: str | None = None
    activation_attempts: int = 0  # the module's `activated` check after the reboot
    activation_error: str | None = None
    commit_attempts: int = 0
    commit_error: str | None = None
    rollback_attempts: int = 0
    rollback_error: str | None = None
    next_seq: int = 1
    outbox: tuple[Report, ...] = ()
    deferred_reason: str | None = None  # the last deferral reported, so that it is reported once
    refused: tuple[str, str] | None = None  # (deployment, target) refused: not tried again
    installed: Installed = field(default_factory=Installed)
    failed_rollback: FailedRollback | None = None

    FILE = "update.json"

    def moved(self, phase: Phase, **changes: Any) -> UpdateState:
        return replace(self, phase=phase, **changes)

    def queue(self, deployment_id: str | None, status: str, detail: str | None = None) -> UpdateState:
        """Adds a report to the outbox with the next sequence number (none for an offline install)."""
        if deployment_id is None:
            return self
        report = Report(deployment_id, self.next_seq, status, detail[-4000:] if detail else None)
        return replace(self, next_seq=self.next_seq + 1, outbox=(*self.outbox, report))

    def finished(self, **changes: Any) -> UpdateState:
        """Back to idle, the install's own fields cleared; counters, outbox, installed and the record of
        a failed rollback kept."""
        kept: dict[str, Any] = {
            "next_seq": self.next_seq,
            "outbox": self.outbox,
            "installed": self.installed,
            "refused": self.refused,
            "failed_rollback": self.failed_rollback,
        }
        return replace(UpdateState(), **(kept | changes))

    @classmethod
    def load(cls, data_dir: Path) -> UpdateState:
        path = data_dir / cls.FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise AgentError("invalid_state", f"{path}: {exc}") from None
        try:
            if raw.get("phase") not in PHASES:
                raise ValueError(f"unknown phase {raw.get('phase')!r}")
            raw["outbox"] = tuple(Report(**report) for report in raw.get("outbox", ()))
            raw["installed"] = Installed(**raw.get("installed", {}))
            refused = raw.get("refused")
            raw["refused"] = tuple(refused) if refused else None
            failed = raw.get("failed_rollback")
            raw["failed_rollback"] = FailedRollback(**failed) if failed else None
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise AgentError("invalid_state", f"{path}: {exc}") from None

    def save(self, data_dir: Path) -> None:
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        write_atomic(data_dir / self.FILE, text.encode("utf-8"), mode=0o600)

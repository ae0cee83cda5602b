"""How the update flow words a failure for the server, and when it gives up on a step that fails.

A failure never escapes the flow: an exception that escaped would make every check-in run the same
step again, and the device would never report nor take another deployment. So an install that breaks
is rolled back, and a module that cannot be loaded fails the install with nothing installed. The steps
that can only be tried again — the reboot an install asks for, the activation check after it, the
commit, the rollback — are tried once per check-in, each attempt counted in update.json before it
starts (so that one cut short by a crash counts too), the first failure reported once; after the last
attempt a reboot, an activation check or a commit is given up by rolling the install back, and a
rollback by recording it and going back to idle
(docs/update-modules.md, "When an update step fails", says what each leaves on the device).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import fsync_directory
from fleetkeeper_agent.update_state import FailedRollback, UpdateState

log = logging.getLogger(__name__)

MAX_REASON = 1000  # characters of an unexpected exception's message in a report
# Attempts per install, one per check-in (5 minutes apart by default), counted as they start: an attempt
# cut short by a kill counts too, so a step that crashes the agent is given up as well.
MAX_REBOOT_ATTEMPTS = 5  # reboot requests that did not end in a new boot
MAX_ACTIVATION_ATTEMPTS = 5  # `activated` checks that could not tell (an AgentError) after the reboot
MAX_COMMIT_ATTEMPTS = 5
MAX_ROLLBACK_ATTEMPTS = 5
FAILED_DIR = "failed"  # under the data directory: the journals and backups of rollbacks given up
NEEDS_ATTENTION = "the device needs attention"


class ModuleLoadError(AgentError):
    """The release's update module cannot be made from this device's software and configuration."""

    def __init__(self, name: str, cause: AgentError) -> None:
        super().__init__(
            cause.code,
            f"the {name} module could not be loaded: {cause.message}; "
            f"check [modules.{name}] in the agent configuration",
        )


def failure(exc: Exception, where: str) -> str:
    """The reason a step failed, for the report. An AgentError is a failure the module foresaw; anything
    else is a bug (or an input that broke a library): it is named by its type, and its traceback goes
    to the log."""
    if isinstance(exc, AgentError):
        return exc.message
    log.error("%s raised %s", where, type(exc).__name__, exc_info=exc)
    return f"{where} raised {_type_and_text(exc)} (unexpected; the traceback is in the agent's log)"


def _type_and_text(exc: Exception) -> str:
    text = str(exc)
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON] + "…"
    return f"{type(exc).__name__}: {text}"


def _still_under_way(state: UpdateState) -> str:
    """The in-progress status the server last heard for this install, sent again with the news of a step
    tried again: a failure would end the install there (or have the server offer it again) while the
    device carries on with it."""
    return "rebooting" if state.boot_id is not None else "installing"


# --- a reboot that fails, or never happens ---------------------------------------------------------


def failed_reboot_attempt(state: UpdateState, exc: Exception) -> UpdateState:
    """After a reboot request that failed: the error kept for `status`, and reported the first time."""
    error = failure(exc, "the reboot")
    log.error(
        "reboot for %s failed (attempt %d of %d): %s",
        state.target_path,
        state.reboot_attempts,
        MAX_REBOOT_ATTEMPTS,
        error,
    )
    if state.reboot_error is None:
        detail = (
            f"the reboot failed: {error}; the reboot is asked again at the next check-ins, and the install "
            f"rolled back after {MAX_REBOOT_ATTEMPTS} attempts"
        )
        state = state.queue(state.deployment_id, "rebooting", detail)
    return state.moved("rebooting", reboot_error=error)


def reboot_given_up(state: UpdateState) -> UpdateState:
    """After the last reboot request: the install is rolled back, its failure reported then. The old
    release still runs (no new boot came); what the install changed is undone by the module."""
    if state.reboot_error is None:
        reason = f"the device did not restart after {state.reboot_attempts} reboot requests"
    else:
        reason = f"the reboot failed ({state.reboot_attempts} attempts): {state.reboot_error}"
    log.error("gave up rebooting for %s: %s; rolling back", state.target_path, reason)
    return state.moved("rolling_back", detail=f"install failed: {reason}")


# --- an activation check that cannot tell -------------------------------------------------------------


def failed_activation_attempt(state: UpdateState, exc: AgentError) -> UpdateState:
    """After an activation check that could not tell whether the new release runs (a bootloader not
    answering yet): the error kept for `status`, and reported the first time, with the status the
    server has (`rebooting`): the install is still under way, and may well go on at the next attempt."""
    error = failure(exc, f"the {state.release.get('module')} module's activation check")
    log.error(
        "activation check of %s failed (attempt %d of %d): %s",
        state.target_path,
        state.activation_attempts,
        MAX_ACTIVATION_ATTEMPTS,
        error,
    )
    if state.activation_error is None:
        detail = (
            f"the activation check failed: {error}; the check is made again at the next check-ins, and "
            f"the install rolled back after {MAX_ACTIVATION_ATTEMPTS} attempts"
        )
        state = state.queue(state.deployment_id, _still_under_way(state), detail)
    return state.moved("rebooting", activation_error=error)


def activation_given_up(state: UpdateState) -> UpdateState:
    """After the last activation check: the new release is taken as not activated, and the install
    rolled back, its failure reported then, rather than the device waiting between two releases."""
    error = state.activation_error or "each attempt was cut short"
    log.error("gave up checking the activation of %s: %s; rolling back", state.target_path, error)
    detail = f"install failed: the activation check failed ({state.activation_attempts} attempts): {error}"
    return state.moved("rolling_back", detail=detail)


# --- a commit that fails ------------------------------------------------------------------------------


def failed_commit_attempt(state: UpdateState, exc: Exception) -> UpdateState:
    """After a commit that failed: the new release runs but is not permanent (rootfs-ab's bootloader
    may still go back from it). The error is kept for `status`, and reported the first time."""
    error = failure(exc, f"the {state.release.get('module')} module's commit")
    log.error(
        "commit of %s failed (attempt %d of %d): %s",
        state.target_path,
        state.commit_attempts,
        MAX_COMMIT_ATTEMPTS,
        error,
    )
    if state.commit_error is None:
        detail = (
            f"commit failed: {error}; the new release runs but is not permanent yet: the commit is tried "
            f"again at the next check-ins, and the release rolled back after {MAX_COMMIT_ATTEMPTS} attempts"
        )
        state = state.queue(state.deployment_id, _still_under_way(state), detail)
    return state.moved("committing", commit_error=error)


def commit_given_up(state: UpdateState) -> UpdateState:
    """After the last commit attempt: the install is rolled back, its failure reported then, so that the
    device runs a release it can keep rather than one that is not permanent."""
    error = state.commit_error or "each attempt was cut short"
    log.error("gave up committing %s: %s; rolling back", state.target_path, error)
    return state.moved("rolling_back", detail=f"commit failed ({state.commit_attempts} attempts): {error}")


# --- a rollback that fails ---------------------------------------------------------------------------


def failed_rollback_attempt(state: UpdateState, exc: Exception) -> UpdateState:
    """After an attempt that failed (the module's rollback, or the reboot it asked for): the error kept
    for `status`, and the failure reported the first time only (the server needs to hear it once; a
    rollback that works later changes nothing it knows). The error is `<code>: <message>` for an
    AgentError, `<Type>: <message>` for anything else."""
    if isinstance(exc, AgentError):
        error = f"{exc.code}: {exc.message}"
    else:
        error = _type_and_text(exc)
        log.error("rolling back %s raised", state.target_path, exc_info=exc)
    log.error(
        "rollback of %s failed (attempt %d of %d): %s",
        state.target_path,
        state.rollback_attempts,
        MAX_ROLLBACK_ATTEMPTS,
        error,
    )
    if state.rollback_error is None:
        state = state.queue(state.deployment_id, "failure", _report(state, error))
    return state.moved("rolling_back", rollback_error=error)


def giving_up(state: UpdateState, work_dir: Path, data_dir: Path) -> UpdateState:
    """The announcement of `rollback_failed`: the record, and where the module's journal and backups
    will be kept, decided before anything moves so that a kill here ends the same way."""
    error = state.rollback_error or (
        f"the rollback did not finish in {state.rollback_attempts} attempts: cut short, or the reboot it "
        "asked for never happened"
    )
    if state.rollback_error is None:
        state = state.queue(state.deployment_id, "failure", _report(state, error))
    record = FailedRollback(
        target_path=state.target_path,
        deployment_id=state.deployment_id,
        module=state.release.get("module"),
        detail=_report(state, error),
        attempts=state.rollback_attempts,
        kept_dir=str(_free_name(data_dir / FAILED_DIR, work_dir.name)) if work_dir.exists() else None,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return state.moved("rollback_failed", failed_rollback=record)


def keep_for_repair(work_dir: Path, record: FailedRollback) -> FailedRollback:
    """Moves the module's journal and backups where the record says (after a kill, done already), and
    says on the log that the device needs attention. Returns the record naming where they are: a
    move that fails leaves them in place rather than holding the agent here."""
    if record.kept_dir is not None and work_dir.exists():
        kept = Path(record.kept_dir)
        try:
            kept.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(work_dir, kept)
            fsync_directory(kept.parent)
            fsync_directory(work_dir.parent)
        except OSError as exc:
            log.error("cannot move %s to %s (%s): left where it is", work_dir, kept, exc)
            record = replace(record, kept_dir=str(work_dir))
    log.error(
        "gave up rolling back %s after %d attempts; what ran before may not be back; the module's journal "
        "and backups are in %s: %s",
        record.target_path,
        record.attempts,
        record.kept_dir or "(none were made)",
        record.detail,
    )
    return record


def _report(state: UpdateState, error: str) -> str:
    return f"{state.detail or 'install failed'}; rollback failed: {error} — {NEEDS_ATTENTION}"


def _free_name(directory: Path, name: str) -> Path:
    """`name`, or `name.2`, `name.3` … when an earlier rollback of the same payload was given up too."""
    candidate, counter = directory / name, 1
    while candidate.exists():
        counter += 1
        candidate = directory / f"{name}.{counter}"
    return candidate

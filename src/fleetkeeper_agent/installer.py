"""Installs a downloaded release through its update module — install, reboot, health check, then commit
or roll back: the part of the update flow (updates.py) that changes the device.

Each step saves the state that announces it (fsync, atomic rename) before it acts. A failure that
escaped would make every check-in run the same step again, never reporting; so an install that breaks
is rolled back, and a reboot, an activation check, a commit or a rollback that fails is reported once
and tried again at the next check-ins a bounded number of times (update_failures.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fleetkeeper_agent.client import DeviceClient
from fleetkeeper_agent.commands import run_command, run_health_checks
from fleetkeeper_agent.config import AgentConfig
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import remove_tree
from fleetkeeper_agent.update_failures import (
    MAX_ACTIVATION_ATTEMPTS,
    MAX_COMMIT_ATTEMPTS,
    MAX_REBOOT_ATTEMPTS,
    MAX_ROLLBACK_ATTEMPTS,
    ModuleLoadError,
    activation_given_up,
    commit_given_up,
    failed_activation_attempt,
    failed_commit_attempt,
    failed_reboot_attempt,
    failed_rollback_attempt,
    failure,
    giving_up,
    keep_for_repair,
    reboot_given_up,
)
from fleetkeeper_agent.update_state import Installed, Phase, UpdateState, mark_inventory_due

if TYPE_CHECKING:
    from fleetkeeper_agent.modules import InstallContext, UpdateModule

log = logging.getLogger(__name__)

WHOAMI_PATH = "/device/v1/whoami"
# The phases of an install under way; before them, updates.UpdateFlow checks in and downloads.
INSTALL_PHASES: tuple[Phase, ...] = (
    "installing",
    "rebooting",
    "verifying",
    "awaiting_commit",
    "committing",
    "rolling_back",
    "rolling_back_rebooting",
    "rollback_failed",
)


def payload_path(data_dir: Path, hashes: dict[str, str], target_path: str | None) -> Path:
    sha256 = hashes.get("sha256", "payload")
    name = (target_path or "payload").rsplit("/", 1)[-1]
    # The payload keeps its signed file name: update modules install it under that name.
    return data_dir / "downloads" / sha256[:16] / name


def work_dir(data_dir: Path, state: UpdateState) -> Path:
    return data_dir / "work" / state.hashes.get("sha256", "install")[:16]


def clear_work_dir(data_dir: Path, state: UpdateState) -> None:
    """Before an install starts. A work directory left by an earlier install of the same payload (killed
    between its last state write and its clean-up) holds that install's journal, which the module would
    take for this one's: its backup of what ran before would be restored by a rollback."""
    remove_tree(work_dir(data_dir, state))


def remove_install_files(data_dir: Path, state: UpdateState, *, keep_work_dir: bool = False) -> None:
    """The payload and the module's work directory, once the install is over. Without a recursion (a
    module may leave a tree of any depth) and without following a link; what cannot be removed is
    left, logged, rather than holding the agent here."""
    paths = [payload_path(data_dir, state.hashes, state.target_path).parent]
    if not keep_work_dir:
        paths.append(work_dir(data_dir, state))
    for path in paths:
        try:
            remove_tree(path)
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)


class Installer:
    """The install under way. `step(state)` runs the step its phase names."""

    def __init__(
        self,
        config: AgentConfig,
        client: DeviceClient | None,
        *,
        reboot: Callable[[], None] | None = None,
        send_reports: Callable[[UpdateState], UpdateState] | None = None,
    ) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.client = client
        self._reboot = reboot or self._run_reboot_command
        # The reports queued before a reboot go out first: the agent may not come back to send them.
        self._send_reports = send_reports or (lambda state: state)

    def step(self, state: UpdateState) -> UpdateState | None:
        """Runs the step of `state` (already saved); returns the next state, saved, or None when the
        step waits for the next check-in."""
        handler: Callable[[UpdateState], UpdateState | None] = getattr(self, f"_{state.phase}")
        return handler(state)

    def _save(self, state: UpdateState) -> UpdateState:
        state.save(self.data_dir)
        return state

    # --- install, reboot, health check ------------------------------------------------------------

    def _installing(self, state: UpdateState) -> UpdateState | None:
        try:
            module, context = self._module(state)
        except ModuleLoadError as exc:
            log.error("install of %s failed: %s", state.target_path, exc.message)
            # Nothing was installed: nothing to roll back.
            done = self._save(state.finished().queue(state.deployment_id, "failure", exc.message))
            remove_install_files(self.data_dir, state)
            return done
        try:
            needs_reboot = module.install(context)
        except Exception as exc:  # whatever breaks an install is rolled back: retried as is, it breaks again
            reason = failure(exc, f"the {module.name} module's install")
            log.error("install of %s failed: %s", state.target_path, reason)
            return self._save(state.moved("rolling_back", detail=f"install failed: {reason}"))
        if needs_reboot:
            rebooting = state.moved("rebooting", boot_id=self._boot_id(), reboot_attempts=1)
            return self._reboot_into(rebooting.queue(state.deployment_id, "rebooting"))
        return self._save(state.moved("verifying"))

    def _rebooting(self, state: UpdateState) -> UpdateState | None:
        if self._boot_id() == state.boot_id:
            # Not rebooted: killed before asking, the request failed, or it was not heeded.
            if state.reboot_attempts >= MAX_REBOOT_ATTEMPTS:
                return self._save(reboot_given_up(state))
            return self._reboot_into(state.moved("rebooting", reboot_attempts=state.reboot_attempts + 1))
        return self._check_activation(state)

    def _check_activation(self, state: UpdateState) -> UpdateState | None:
        """After the reboot: does the new release run? A check that cannot tell yet (an AgentError: a
        bootloader not answering) is made again at the next check-ins, one attempt each, counted before
        it starts; reported once, and after the last the release is taken as not activated."""
        if state.activation_attempts >= MAX_ACTIVATION_ATTEMPTS:  # the last one was cut short
            return self._save(activation_given_up(state))
        state = self._save(state.moved("rebooting", activation_attempts=state.activation_attempts + 1))
        try:
            module, context = self._module(state)
        except ModuleLoadError as exc:  # the configuration changed across the reboot: nothing to ask
            detail = f"install failed: the activation check could not run: {exc.message}"
            return self._save(state.moved("rolling_back", detail=detail))
        try:
            activated = module.activated(context)
        except AgentError as exc:  # escaping, it would stop every check-in here, unreported
            failed = failed_activation_attempt(state, exc)
            if failed.activation_attempts >= MAX_ACTIVATION_ATTEMPTS:
                return self._save(activation_given_up(failed))
            self._save(failed)
            return None  # asked again at the next check-in
        except Exception as exc:  # a module's bug must not hold the device between two releases
            reason = failure(exc, f"the {module.name} module's activation check")
            return self._save(state.moved("rolling_back", detail=f"install failed: {reason}"))
        if not activated:
            return self._save(
                state.moved("rolling_back", detail="the new release did not boot; the old one runs again")
            )
        if state.deployment_id is None:
            return self._save(state.moved("awaiting_commit"))
        return self._save(state.moved("verifying"))

    def _reboot_into(self, state: UpdateState) -> UpdateState | None:
        """Saves the state (the attempt counted), reports, and asks for the reboot; the step then waits
        for the next boot. A request that fails is a failed attempt of the step that asked for it."""
        state = self._send_reports(self._save(state))
        log.warning("rebooting to finish %s", state.target_path)
        try:
            self._reboot()
        except Exception as exc:  # escaping, it would stop every check-in here, unreported
            if state.phase == "rolling_back_rebooting":
                return self._rollback_attempt_failed(state, exc)
            failed = failed_reboot_attempt(state, exc)
            if failed.reboot_attempts >= MAX_REBOOT_ATTEMPTS:
                return self._save(reboot_given_up(failed))
            self._save(failed)
        return None

    def _run_reboot_command(self) -> None:
        outcome = run_command(self.config.reboot_command, timeout=self.config.health_timeout)
        if not outcome.ok:
            raise AgentError("reboot_failed", outcome.tail)

    def _boot_id(self) -> str:
        try:
            return self.config.boot_id_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AgentError("io_error", f"{self.config.boot_id_file}: {exc.strerror}") from None

    def _verifying(self, state: UpdateState) -> UpdateState | None:
        if state.deployment_id is None:
            return self._save(state.moved("awaiting_commit"))
        outcome = self.health_check()
        if not outcome[0]:
            log.error("health check failed: %s", outcome[1])
            return self._save(state.moved("rolling_back", detail=f"health check failed:\n{outcome[1]}"))
        return self._save(state.moved("committing"))

    def health_check(self) -> tuple[bool, str]:
        """The configured commands, then the server: a release that cuts the device off fails."""
        outcome = run_health_checks(self.config.health_commands, timeout=self.config.health_timeout)
        if not outcome.ok:
            return False, outcome.tail
        if self.client is None:
            return False, f"{outcome.tail}\nthe server cannot be reached: offline".strip()
        try:
            self.client.call("GET", WHOAMI_PATH)
        except AgentError as exc:
            return False, f"{outcome.tail}\nthe server cannot be reached: {exc}".strip()
        return True, outcome.tail

    def _awaiting_commit(self, state: UpdateState) -> UpdateState | None:
        return None  # an offline install: `fleetkeeper-agent commit` or `rollback` decides

    # --- commit, rollback -------------------------------------------------------------------------

    def _committing(self, state: UpdateState) -> UpdateState | None:
        """One attempt per check-in, counted before it starts; a failure is reported once, and after the
        last attempt the install is rolled back (update_failures.py)."""
        if state.commit_attempts >= MAX_COMMIT_ATTEMPTS:  # the last one was cut short
            return self._save(commit_given_up(state))
        state = self._save(state.moved("committing", commit_attempts=state.commit_attempts + 1))
        try:
            module, context = self._module(state)
            module.commit(context)
        except Exception as exc:  # escaping, it would stop every check-in here, unreported
            failed = failed_commit_attempt(state, exc)
            if failed.commit_attempts >= MAX_COMMIT_ATTEMPTS:
                return self._save(commit_given_up(failed))
            self._save(failed)
            return None  # tried again at the next check-in
        release = state.release
        installed = Installed(
            name=release.get("name"),
            version=release.get("version"),
            target_path=state.target_path,
            module=release.get("module"),
            release_counter=state.release_counter,
            highest_counter=max(state.release_counter, state.installed.highest_counter),
        )
        log.info("committed %s", state.target_path)
        mark_inventory_due(self.data_dir)
        # A release committed since: the record of an earlier rollback given up is history now.
        done = self._save(
            state.finished(installed=installed, failed_rollback=None).queue(state.deployment_id, "success")
        )
        remove_install_files(self.data_dir, state)
        return done

    def _rolling_back(self, state: UpdateState) -> UpdateState | None:
        """One attempt per check-in (the module's rollback and the reboot it asks for), counted before it
        starts; a failure is reported once, and after the last attempt the agent gives up."""
        if state.rollback_attempts >= MAX_ROLLBACK_ATTEMPTS:  # the last one was cut short
            return self._save(giving_up(state, work_dir(self.data_dir, state), self.data_dir))
        state = self._save(state.moved("rolling_back", rollback_attempts=state.rollback_attempts + 1))
        try:
            module, context = self._module(state)
            needs_reboot = module.rollback(context)
        except Exception as exc:  # escaping, it would stop every check-in here, unreported
            return self._rollback_attempt_failed(state, exc)
        if needs_reboot:
            return self._reboot_into(state.moved("rolling_back_rebooting", boot_id=self._boot_id()))
        return self._rolled_back(state)

    def _rollback_attempt_failed(self, state: UpdateState, exc: Exception) -> UpdateState | None:
        failed = failed_rollback_attempt(state, exc)
        if failed.rollback_attempts >= MAX_ROLLBACK_ATTEMPTS:
            return self._save(giving_up(failed, work_dir(self.data_dir, state), self.data_dir))
        self._save(failed)
        return None  # tried again at the next check-in

    def _rolling_back_rebooting(self, state: UpdateState) -> UpdateState | None:
        if self._boot_id() == state.boot_id:
            # Not rebooted (killed before asking, or not heeded): the next attempt, counted, asks again.
            return self._save(state.moved("rolling_back"))
        return self._rolled_back(state)

    def _rolled_back(self, state: UpdateState) -> UpdateState:
        log.warning("rolled back %s: %s", state.target_path, state.detail)
        done = state.finished()
        if state.rollback_error is None:  # else the failure was reported with the first error
            done = done.queue(state.deployment_id, "failure", state.detail)
        self._save(done)
        remove_install_files(self.data_dir, state)
        return done

    def _rollback_failed(self, state: UpdateState) -> UpdateState:
        """Gives up on the install: its journal and backups move out of the way of the next install,
        kept for whoever repairs the device; the payload is dropped; the record stays in the state."""
        assert state.failed_rollback is not None  # announced with the phase
        record = keep_for_repair(work_dir(self.data_dir, state), state.failed_rollback)
        done = self._save(state.finished(failed_rollback=record))
        remove_install_files(self.data_dir, state, keep_work_dir=True)
        return done

    def _module(self, state: UpdateState) -> tuple[UpdateModule, InstallContext]:
        from fleetkeeper_agent.modules import InstallContext, load_module

        name = str(state.release.get("module"))
        try:
            module = load_module(name, self.config.modules.get(name, {}))
        except AgentError as exc:
            raise ModuleLoadError(name, exc) from exc
        directory = work_dir(self.data_dir, state)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return module, InstallContext(
            release=state.release,
            payload=payload_path(self.data_dir, state.hashes, state.target_path),
            work_dir=directory,
            settings=self.config.modules.get(name, {}),
        )

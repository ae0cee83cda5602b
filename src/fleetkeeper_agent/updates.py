"""The update flow of DESIGN.md ("Update on the device"), as a state machine that survives a kill.

    idle ─check-in─> downloading ─> downloaded ─> installing ─> (rebooting) ─> verifying ─> committing ─> idle
                                                      │              │              │              │
                                                      └──────────────┴── failure ───┴──────────────┘
                                  (a reboot, an activation check or a commit: after its last attempt)
                                                                            │
                                                                            v
                                                                     rolling_back ─> idle
                                                                            │ its last attempt failed
                                                                            └─> rollback_failed ─> idle

This module checks in, downloads, and waits for the install's window; from `installing` on, the
Installer (installer.py) drives the release's update module. Each step writes the state that
announces it (fsync, atomic rename) before it acts, and every action is idempotent (the update
modules' contract): killed anywhere, the agent starts again at the announced step and the device ends
on exactly the old release or the new one. Reports go through an outbox in the same state file, so
the server hears each of them, once, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fleetkeeper_agent.client import DeviceClient
from fleetkeeper_agent.commands import run_command
from fleetkeeper_agent.config import AgentConfig
from fleetkeeper_agent.deployment_client import (
    CurrentDeployment,
    current_deployment,
    report_security_event,
    send_report,
)
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.installer import (
    INSTALL_PHASES,
    Installer,
    clear_work_dir,
    payload_path,
    remove_install_files,
)
from fleetkeeper_agent.update_state import UpdateState

if TYPE_CHECKING:
    from fleetkeeper_agent.uptane import UpdateChecker, VerifiedUpdate

log = logging.getLogger(__name__)


class UpdateFlow:
    """One device's updates. `tick()` is one check-in and every step that can run after it."""

    def __init__(
        self,
        config: AgentConfig,
        client: DeviceClient | None,
        checker: UpdateChecker | None,
        *,
        reboot: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.client = client
        self.checker = checker
        self.installer = Installer(config, client, reboot=reboot, send_reports=self._flush)
        # What the idle check-in just verified, for the download it starts in the same pass: no
        # second refresh of both repositories a moment later.
        self._just_checked: tuple[VerifiedUpdate, CurrentDeployment] | None = None

    @property
    def _server(self) -> DeviceClient:
        if self.client is None:
            raise AgentError("offline", "this step needs the server")
        return self.client

    @property
    def _online_checker(self) -> UpdateChecker:
        if self.checker is None:
            raise AgentError("offline", "this step needs the server")
        return self.checker

    # --- the loop -------------------------------------------------------------------------------------

    def tick(self) -> UpdateState:
        return self.advance(self._flush(UpdateState.load(self.data_dir)))

    def advance(self, state: UpdateState) -> UpdateState:
        """Runs steps from `state` (already saved) until one has to wait; returns where it stands."""
        while True:
            outcome: UpdateState | None
            if state.phase in INSTALL_PHASES:
                outcome = self.installer.step(state)
            else:
                outcome = getattr(self, f"_{state.phase}")(state)
            if outcome is None:
                return self._flush(UpdateState.load(self.data_dir))
            state = self._flush(outcome)

    def _save(self, state: UpdateState) -> UpdateState:
        state.save(self.data_dir)
        return state

    def _flush(self, state: UpdateState) -> UpdateState:
        """Sends the queued reports in order; keeps them on a network error."""
        while state.outbox and self.client is not None:
            report = state.outbox[0]
            try:
                answer = send_report(self.client, report)
            except AgentError as exc:
                log.warning("report %s for %s kept for later: %s", report.status, report.deployment_id, exc)
                return state
            state = self._save(replace(state, outbox=state.outbox[1:]))
            if answer == "aborted" and state.deployment_id == report.deployment_id:
                state = self._abandon(state, "the deployment was aborted")
        return state

    # --- idle: the check-in -------------------------------------------------------------------------

    def _idle(self, state: UpdateState) -> UpdateState | None:
        found = self._check(state)
        if found is None:
            return None
        update, current = found
        if (current.deployment_id, update.target_path) == state.refused:
            return None
        if update.target_path == state.installed.target_path and not current.force:
            log.info("%s is installed already", update.target_path)
            # Reported once per check-in: the deployment stops naming it once the server has the report.
            self._save(state.queue(current.deployment_id, "already_installed"))
            return None
        log.info("deployment %s: downloading %s", current.deployment_id, update.target_path)
        self._just_checked = found
        return self._save(
            state.moved(
                "downloading",
                deployment_id=current.deployment_id,
                target_path=update.target_path,
                length=update.length,
                hashes=dict(update.hashes),
                release=dict(update.release),
                release_counter=update.release_counter,
                force=current.force,
                deferred_reason=None,
            ).queue(current.deployment_id, "downloading")
        )

    def _check(self, state: UpdateState) -> tuple[VerifiedUpdate, CurrentDeployment] | None:
        """Refreshes the director and the image repository. The update and the deployment it is
        reported against, when they agree; a refusal is reported as a security event."""
        from fleetkeeper_agent.errors import UpdateRefused

        try:
            update = self._online_checker.check(state.installed.highest_counter)
            current = current_deployment(self._server)
        except UpdateRefused as exc:
            self._refused(state, exc)
            return None
        except AgentError as exc:
            log.warning("check-in failed: %s", exc)
            return None
        if update is None or current is None:
            return None
        if current.target_path != update.target_path:
            # The director and the deployments answered a moment apart: ask again next time.
            log.info(
                "the director lists %s, the deployment %s: waiting", update.target_path, current.target_path
            )
            return None
        return update, current

    def _refused(self, state: UpdateState, exc: AgentError) -> None:
        """Verification failed: nothing is installed, the operator hears why, and the same
        deployment's target is not tried again."""
        log.error("update refused: %s", exc)
        try:
            report_security_event(self._server, exc.code, exc.message)
            current = current_deployment(self._server)
        except AgentError as network:
            log.warning("could not report the refusal yet: %s", network)
            current = None
        if current is None and state.deployment_id is None:
            return
        deployment_id = current.deployment_id if current else state.deployment_id
        target_path = current.target_path if current else state.target_path
        assert deployment_id is not None
        assert target_path is not None
        self._save(
            state.finished(refused=(deployment_id, target_path)).queue(
                deployment_id, "refused", f"{exc.code}: {exc.message}"
            )
        )
        self._clean(state)

    # --- download -------------------------------------------------------------------------------------

    def _downloading(self, state: UpdateState) -> UpdateState | None:
        from fleetkeeper_agent.errors import UpdateRefused

        found, self._just_checked = self._just_checked or self._still_wanted(state), None
        if found is None:
            return None
        if isinstance(found, UpdateState):
            return found
        update, _ = found
        payload = self._payload_path(state)
        payload.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._online_checker.download(update, payload)
        except UpdateRefused as exc:
            self._refused(state, exc)
            return None
        except AgentError as exc:  # the network: the partial file stays, the next tick resumes
            log.warning("download of %s interrupted: %s", state.target_path, exc)
            return None
        return self._save(state.moved("downloaded").queue(state.deployment_id, "downloaded"))

    def _still_wanted(
        self, state: UpdateState
    ) -> tuple[VerifiedUpdate, CurrentDeployment] | UpdateState | None:
        """Before installing, the server may have moved on (an abort, a newer deployment): what was
        downloaded is then dropped, nothing having been installed."""
        found = self._check(state)
        if found is None:
            try:
                still = current_deployment(self._server)
            except AgentError:
                return None
            if still is None or still.deployment_id != state.deployment_id:
                return self._abandon(state, "the deployment no longer asks for this release")
            return None
        update, current = found
        if current.deployment_id != state.deployment_id or update.target_path != state.target_path:
            return self._abandon(state, "the deployment no longer asks for this release")
        return found

    def _downloaded(self, state: UpdateState) -> UpdateState | None:
        found = self._still_wanted(state)
        if found is None or isinstance(found, UpdateState):
            return found
        _, current = found
        reason = None
        if not current.install_allowed:
            reason = "outside the maintenance window" + (
                f"; next window {current.next_window}" if current.next_window else ""
            )
        elif self.config.busy_command:
            busy = run_command(self.config.busy_command, timeout=self.config.health_timeout)
            if not busy.ok:
                reason = "the device is busy" + (f": {busy.tail}" if busy.tail else "")
        if reason is not None:
            if reason != state.deferred_reason:
                log.info("install deferred: %s", reason)
                return self._save(
                    state.moved("downloaded", deferred_reason=reason).queue(
                        state.deployment_id, "deferred", reason
                    )
                )
            return None
        try:
            clear_work_dir(self.data_dir, state)
        except OSError as exc:
            log.warning("cannot clear the work directory for %s (tried again): %s", state.target_path, exc)
            return None
        return self._save(state.moved("installing").queue(state.deployment_id, "installing"))

    def _abandon(self, state: UpdateState, why: str) -> UpdateState:
        """Drops a download that was not installed: nothing on the device changed."""
        if state.phase not in ("downloading", "downloaded"):
            return state
        log.info("dropping %s: %s", state.target_path, why)
        done = self._save(state.finished())
        self._clean(state)
        return done

    # --- paths ------------------------------------------------------------------------------------

    def payload_path(self, hashes: dict[str, str], target_path: str | None) -> Path:
        return payload_path(self.data_dir, hashes, target_path)

    def _payload_path(self, state: UpdateState) -> Path:
        return payload_path(self.data_dir, state.hashes, state.target_path)

    def _clean(self, state: UpdateState) -> None:
        remove_install_files(self.data_dir, state)

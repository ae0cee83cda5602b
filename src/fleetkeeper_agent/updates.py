"""The update flow of DESIGN.md ("Update on the device"), as a state machine that survives a kill.

    idle ─check-in─> downloading ─> downloaded ─> installing ─> (rebooting) ─> verifying ─> committing ─> idle
                                                      │              │               │
                                                      └──────────────┴── failure ────┴─> rolling_back ─> idle
                                                                                              │
                                                         (its last attempt failed) rollback_failed ─> idle

Each step writes the state that announces it (fsync, atomic rename) before it acts, and every
action is idempotent (the update modules' contract): killed anywhere, the agent starts again at the
announced step and the device ends on exactly the old release or the new one. Reports go through
an outbox in the same state file, so the server hears each of them, once, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fleetkeeper_agent.client import DeviceClient
from fleetkeeper_agent.commands import run_command, run_health_checks
from fleetkeeper_agent.config import AgentConfig
from fleetkeeper_agent.deployment_client import (
    CurrentDeployment,
    current_deployment,
    report_security_event,
    send_report,
)
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import remove_tree
from fleetkeeper_agent.update_failures import (
    MAX_ROLLBACK_ATTEMPTS,
    ModuleLoadError,
    failed_rollback_attempt,
    failure,
    giving_up,
    keep_for_repair,
)
from fleetkeeper_agent.update_state import Installed, UpdateState, mark_inventory_due

if TYPE_CHECKING:
    from fleetkeeper_agent.modules import InstallContext, UpdateModule
    from fleetkeeper_agent.uptane import UpdateChecker, VerifiedUpdate

log = logging.getLogger(__name__)

WHOAMI_PATH = "/device/v1/whoami"


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
        self._reboot = reboot or self._run_reboot_command
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
            handler = getattr(self, f"_{state.phase}")
            outcome: UpdateState | None = handler(state)
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
        return self._save(state.moved("installing").queue(state.deployment_id, "installing"))

    # --- install, reboot, health check ------------------------------------------------------------

    def _installing(self, state: UpdateState) -> UpdateState | None:
        try:
            module, context = self._module(state)
        except ModuleLoadError as exc:
            log.error("install of %s failed: %s", state.target_path, exc.message)
            # Nothing was installed: nothing to roll back.
            done = self._save(state.finished().queue(state.deployment_id, "failure", exc.message))
            self._clean(state)
            return done
        try:
            needs_reboot = module.install(context)
        except Exception as exc:  # whatever breaks an install is rolled back: retried as is, it breaks again
            reason = failure(exc, f"the {module.name} module's install")
            log.error("install of %s failed: %s", state.target_path, reason)
            return self._save(state.moved("rolling_back", detail=f"install failed: {reason}"))
        if needs_reboot:
            self._reboot_into(
                state.moved("rebooting", boot_id=self._boot_id()).queue(state.deployment_id, "rebooting")
            )
            return None
        return self._save(state.moved("verifying"))

    def _rebooting(self, state: UpdateState) -> UpdateState | None:
        if self._boot_id() == state.boot_id:
            self._reboot_into(state)  # killed before the reboot happened: ask again
            return None
        try:
            module, context = self._module(state)
        except ModuleLoadError as exc:  # the configuration changed across the reboot: nothing to ask
            detail = f"install failed: the activation check could not run: {exc.message}"
            return self._save(state.moved("rolling_back", detail=detail))
        try:
            activated = module.activated(context)
        except AgentError:
            raise  # a bootloader not answering yet: asked again at the next check-in
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
        try:
            self._server.call("GET", WHOAMI_PATH)
        except AgentError as exc:
            return False, f"{outcome.tail}\nthe server cannot be reached: {exc}".strip()
        return True, outcome.tail

    def _awaiting_commit(self, state: UpdateState) -> UpdateState | None:
        return None  # an offline install: `fleetkeeper-agent commit` or `rollback` decides

    # --- commit, rollback -------------------------------------------------------------------------

    def _committing(self, state: UpdateState) -> UpdateState | None:
        module, context = self._module(state)
        module.commit(context)
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
        self._clean(state)
        return done

    def _rolling_back(self, state: UpdateState) -> UpdateState | None:
        """One attempt per check-in, announced before it starts; a failure is reported once, and after
        the last attempt the agent gives up (update_failures.py)."""
        if state.rollback_attempts >= MAX_ROLLBACK_ATTEMPTS:  # the last one was cut short
            return self._save(giving_up(state, self._work_dir(state), self.data_dir))
        state = self._save(state.moved("rolling_back", rollback_attempts=state.rollback_attempts + 1))
        try:
            module, context = self._module(state)
            needs_reboot = module.rollback(context)
        except Exception as exc:  # escaping, it would stop every check-in here, unreported
            failed = failed_rollback_attempt(state, exc)
            if failed.rollback_attempts >= MAX_ROLLBACK_ATTEMPTS:
                return self._save(giving_up(failed, self._work_dir(state), self.data_dir))
            self._save(failed)
            return None  # tried again at the next check-in
        if needs_reboot:
            self._reboot_into(state.moved("rolling_back_rebooting", boot_id=self._boot_id()))
            return None
        return self._rolled_back(state)

    def _rolling_back_rebooting(self, state: UpdateState) -> UpdateState | None:
        if self._boot_id() == state.boot_id:
            self._reboot_into(state)
            return None
        return self._rolled_back(state)

    def _rolled_back(self, state: UpdateState) -> UpdateState:
        log.warning("rolled back %s: %s", state.target_path, state.detail)
        done = state.finished()
        if state.rollback_error is None:  # else the failure was reported with the first error
            done = done.queue(state.deployment_id, "failure", state.detail)
        self._save(done)
        self._clean(state)
        return done

    def _rollback_failed(self, state: UpdateState) -> UpdateState:
        """Gives up on the install: its journal and backups move out of the way of the next install,
        kept for whoever repairs the device; the payload is dropped; the record stays in the state."""
        assert state.failed_rollback is not None  # announced with the phase
        record = keep_for_repair(self._work_dir(state), state.failed_rollback)
        done = self._save(state.finished(failed_rollback=record))
        self._clean(state, keep_work_dir=True)
        return done

    def _abandon(self, state: UpdateState, why: str) -> UpdateState:
        """Drops a download that was not installed: nothing on the device changed."""
        if state.phase not in ("downloading", "downloaded"):
            return state
        log.info("dropping %s: %s", state.target_path, why)
        done = self._save(state.finished())
        self._clean(state)
        return done

    # --- helpers ----------------------------------------------------------------------------------

    def _reboot_into(self, state: UpdateState) -> None:
        """Saves the state, reports, asks for the reboot; the step then waits for the next boot."""
        self._save(state)
        self._flush(state)
        log.warning("rebooting to finish %s", state.target_path)
        self._reboot()
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

    def payload_path(self, hashes: dict[str, str], target_path: str | None) -> Path:
        sha256 = hashes.get("sha256", "payload")
        name = (target_path or "payload").rsplit("/", 1)[-1]
        # The payload keeps its signed file name: update modules install it under that name.
        return self.data_dir / "downloads" / sha256[:16] / name

    def _payload_path(self, state: UpdateState) -> Path:
        return self.payload_path(state.hashes, state.target_path)

    def _work_dir(self, state: UpdateState) -> Path:
        return self.data_dir / "work" / state.hashes.get("sha256", "install")[:16]

    def _module(self, state: UpdateState) -> tuple[UpdateModule, InstallContext]:
        from fleetkeeper_agent.modules import InstallContext, load_module

        name = str(state.release.get("module"))
        try:
            module = load_module(name, self.config.modules.get(name, {}))
        except AgentError as exc:
            raise ModuleLoadError(name, exc) from exc
        work_dir = self._work_dir(state)
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return module, InstallContext(
            release=state.release,
            payload=self._payload_path(state),
            work_dir=work_dir,
            settings=self.config.modules.get(name, {}),
        )

    def _clean(self, state: UpdateState, *, keep_work_dir: bool = False) -> None:
        """The payload and the module's work directory, once the install is over. Without a recursion (a
        module may leave a tree of any depth) and without following a link; what cannot be removed is
        left, logged, rather than holding the agent here."""
        paths = [self._payload_path(state).parent]
        if not keep_work_dir:
            paths.append(self._work_dir(state))
        for path in paths:
            try:
                remove_tree(path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)

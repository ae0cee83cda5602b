"""The deployment's state machine: `advance` moves a deployment on by its counters (pause past a
failure threshold, open phases, finish), and `change_state` is what an operator does to it (pause,
resume, abort, advance a phase)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Principal
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.deployments import clock, progress, targeting
from fleetkeeper.deployments.chunks import member_ids
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.models import (
    FAILED_STATUSES,
    FINAL_STATUSES,
    SUCCEEDED_STATUSES,
    Deployment,
    DeploymentDevice,
)
from fleetkeeper.deployments.plans import parse_failure_threshold, parse_phases
from fleetkeeper.deployments.visibility import visible_deployment
from fleetkeeper.deployments.webhooks import enqueue
from fleetkeeper.devices.models import Device


async def advance(session: AsyncSession, deployment: Deployment) -> None:
    """Moves the deployment on after devices reached a final status (reports, an install found
    at check-in, the fan-out's already-installed devices, an operator ending a live target):
    pause past a failure threshold, finish when every device is done, else open the phases that
    succeeded enough. Reads the counters, never the device rows."""
    threshold = parse_failure_threshold(deployment.failure_threshold)
    counts = await progress.counts_of(session, deployment.id)
    overall = progress.overall(counts)
    phase_counts_now = counts.get(deployment.current_phase, {})
    failed_phase = sum(phase_counts_now.get(status, 0) for status in FAILED_STATUSES)
    failed_all = sum(overall.get(status, 0) for status in FAILED_STATUSES)
    accepted = deployment.accepted_failures or {}
    accepted_in_phase = (
        accepted.get("in_phase", 0) if accepted.get("phase") == deployment.current_phase else 0
    )
    accepted_all = accepted.get("overall", 0)
    crossed = (
        threshold.phase
        and threshold.phase.exceeded_by(failed_phase - accepted_in_phase, sum(phase_counts_now.values()))
    ) or (
        threshold.overall and threshold.overall.exceeded_by(failed_all - accepted_all, sum(overall.values()))
    )
    if crossed and deployment.status == "active":
        deployment.status = "paused"
        deployment.pause_reason = (
            f"failure threshold reached: {failed_phase} failed in phase {deployment.current_phase + 1}, "
            f"{failed_all} overall" + (f" ({accepted_all} accepted on resume)" if accepted_all else "")
        )
        await record(
            session,
            actor=SYSTEM,
            action="deployment.paused",
            object_type="deployment",
            object_id=deployment.id,
            details={"reason": deployment.pause_reason},
        )
        payload = {"deployment_id": deployment.id, "name": deployment.name, "reason": deployment.pause_reason}
        await enqueue(session, "deployment.failure_threshold_reached", payload)
        await enqueue(session, "deployment.paused", payload)
        return
    done = sum(count for status, count in overall.items() if status in FINAL_STATUSES)
    # A live deployment waits for devices to join its group until an operator finishes it (live.py).
    if done == sum(overall.values()) and not deployment.target.get("live"):
        deployment.status = "finished"
        deployment.finished_at = clock.now()
        await record(
            session,
            actor=SYSTEM,
            action="deployment.finished",
            object_type="deployment",
            object_id=deployment.id,
            details={"counts": overall},
        )
        await enqueue(
            session,
            "deployment.finished",
            {"deployment_id": deployment.id, "name": deployment.name, "counts": overall},
        )
        return
    phases = parse_phases(deployment.phases)
    # A phase whose devices were all done before it opened (already installed) advances at once.
    while True:
        phase = phases[deployment.current_phase]
        phase_counts_now = counts.get(deployment.current_phase, {})
        succeeded = sum(phase_counts_now.get(status, 0) for status in SUCCEEDED_STATUSES)
        size = sum(phase_counts_now.values())
        if not (
            phase.advance == "auto"
            and deployment.current_phase + 1 < len(phases)
            and size
            and succeeded * 100 >= phase.success_percent * size
        ):
            return
        deployment.current_phase += 1
        await record(
            session,
            actor=SYSTEM,
            action="deployment.phase_advanced",
            object_type="deployment",
            object_id=deployment.id,
            details={"phase": deployment.current_phase + 1, "succeeded": succeeded, "of": size},
        )


async def _failures_now(session: AsyncSession, deployment: Deployment) -> dict[str, int]:
    counts = await progress.counts_of(session, deployment.id)
    return {
        "phase": deployment.current_phase,
        "in_phase": sum(
            counts.get(deployment.current_phase, {}).get(status, 0) for status in FAILED_STATUSES
        ),
        "overall": sum(
            by_status.get(status, 0) for by_status in counts.values() for status in FAILED_STATUSES
        ),
    }


async def change_state(
    runtime: DeploymentsContext, principal: Principal, deployment_id: str, action: str
) -> Deployment:
    """pause, resume, abort, or advance (an operator opening the next phase). Needs devices:deploy
    on every device of the deployment; resume and advance also the release's tags in releases:read
    (targeting.release_of, as creating it), while stopping one (pause, abort) is always allowed."""
    transitions = {
        "pause": ({"active", "scheduled"}, "paused"),
        "resume": ({"paused"}, "active"),
        "abort": ({"active", "paused", "scheduled"}, "aborted"),
        "advance": ({"active", "paused"}, None),
    }
    allowed, target_status = transitions[action]
    async with runtime.database.transaction() as session:
        deployment = await visible_deployment(session, principal, deployment_id, lock=True)
        if action in ("resume", "advance"):
            await targeting.release_of(session, principal, deployment)
        await targeting.ensure_may_deploy_to_all(session, principal, devices_of(session, deployment))
        if deployment.status not in allowed:
            raise ProblemError(
                f"a {deployment.status} deployment cannot {action}", code="invalid_transition", status=409
            )
        if action == "advance":
            if deployment.current_phase + 1 >= len(deployment.phases):
                raise ProblemError("this is the last phase", code="invalid_transition", status=409)
            deployment.current_phase += 1
        else:
            assert target_status is not None
            deployment.status = target_status
            deployment.pause_reason = "paused by an operator" if action == "pause" else None
        if action == "resume":
            deployment.accepted_failures = await _failures_now(session, deployment)
        if action == "abort":
            deployment.finished_at = clock.now()
            # Devices that have not finished are told to stop; those that did stay as they are.
            await session.execute(
                update(DeploymentDevice)
                .where(
                    DeploymentDevice.deployment_number == deployment.number,
                    DeploymentDevice.status.not_in(FINAL_STATUSES),
                )
                .values(status="aborted", updated_at=clock.now())
                .execution_options(synchronize_session=False)
            )
            await progress.abort_counts(session, deployment_id)
        await record(
            session,
            actor=principal.actor,
            action=f"deployment.{action}d" if action != "abort" else "deployment.aborted",
            object_type="deployment",
            object_id=deployment_id,
            details={"phase": deployment.current_phase + 1},
        )
    return deployment


def devices_of(session: AsyncSession, deployment: Deployment) -> ColumnElement[bool]:
    """The devices of the deployment (a condition on Device): those with a row, and its chunks'."""
    return Device.id.in_(
        select(DeploymentDevice.device_id).where(DeploymentDevice.deployment_number == deployment.number)
    ) | Device.id.in_(member_ids(session, deployment.number))

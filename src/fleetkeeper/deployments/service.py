"""The deployments domain: creating a rollout for a whole fleet in a few set-based statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, case, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.runtime import Runtime
from fleetkeeper.deployments.models import DEVICE_STATUSES, FINAL_STATUSES, Deployment, DeploymentDevice
from fleetkeeper.deployments.plans import (
    Target,
    parse_failure_threshold,
    parse_phases,
    parse_target,
    phase_boundaries,
)
from fleetkeeper.deployments.windows import is_open, next_open, parse_windows
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device
from fleetkeeper.releases.models import Release


@dataclass(frozen=True)
class DeploymentRequest:
    name: str
    release_name: str
    release_version: str
    target: Any
    phases: Any = None
    failure_threshold: Any = None
    windows: Any = None
    start_at: datetime | None = None
    max_retries: int = 0
    force: bool = False
    max_downloading: int | None = None


async def _target_condition(session: AsyncSession, target: Target) -> ColumnElement[bool]:
    """The accepted devices the target names."""
    if target.devices is not None:
        known = await session.scalar(
            select(func.count()).select_from(Device).where(Device.id.in_(target.devices))
        )
        if known != len(target.devices):
            raise NotFoundError("the target names devices that do not exist", code="device_not_found")
        condition: ColumnElement[bool] = Device.id.in_(target.devices)
    else:
        assert target.group is not None
        condition = devices.group_condition(await devices.get_group(session, target.group))
    return condition & (Device.status == "accepted")


async def _release(session: AsyncSession, name: str, version: str) -> Release:
    release: Release | None = await session.scalar(
        select(Release).where(Release.name == name, Release.version == version, Release.deleted_at.is_(None))
    )
    if release is None:
        raise NotFoundError(f"no release {name} {version}", code="release_not_found")
    return release


async def _ensure_may_deploy_to_all(
    session: AsyncSession, principal: Principal, target: ColumnElement[bool]
) -> None:
    """devices:deploy for every device targeted: one outside the caller's scope refuses the whole
    request, naming the group it is in."""
    if principal.grants.scopes(Permission.DEVICES_DEPLOY) is None:
        return
    allowed = await devices.scope_condition(session, principal, Permission.DEVICES_DEPLOY)
    outside = await session.scalar(select(Device.id).where(target, ~allowed).order_by(Device.id).limit(1))
    if outside is None:
        return
    groups = sorted(await devices.device_group_names(session, outside))
    raise ForbiddenError(
        f"the target includes devices outside your scope, such as {outside} "
        f"(in {', '.join(groups) if groups else 'no group'}): devices:deploy is needed on all of them",
        permission=Permission.DEVICES_DEPLOY.value,
        groups=groups,
    )


async def _phase_by_device_id(
    session: AsyncSession, target: ColumnElement[bool], boundaries: list[int], total: int
) -> ColumnElement[int]:
    """Each targeted device's phase, as SQL over Device.id: the devices in id order, cut at the
    phase boundaries. The cut points are the ids at those ranks, each found by a short OFFSET
    walk along the devices' primary key from the previous cut, so the fan-out itself needs no
    ranking of the whole target (a window sort cost more than half a second per million)."""
    cuts: list[tuple[str, int]] = []
    previous_cut: str | None = None
    previous_boundary = 0
    last_phase = next(index for index, boundary in enumerate(boundaries) if boundary >= total)
    for index, boundary in enumerate(boundaries[:last_phase]):
        if boundary == previous_boundary:
            continue  # an empty phase: nobody is ranked between the same two cuts
        query = select(Device.id).where(target)
        if previous_cut is not None:
            query = query.where(Device.id > previous_cut)
        cut = await session.scalar(
            query.order_by(Device.id).offset(boundary - previous_boundary - 1).limit(1)
        )
        if cut is None:  # devices left the target since it was counted: this phase takes the rest
            last_phase = index
            break
        cuts.append((cut, index))
        previous_cut, previous_boundary = cut, boundary
    if not cuts:
        return literal(last_phase, Integer)
    return case(
        *((Device.id <= cut, literal(index, Integer)) for cut, index in cuts),
        else_=literal(last_phase, Integer),
    )


async def create(runtime: Runtime, principal: Principal, request: DeploymentRequest) -> Deployment:
    """Checks everything, then fans out with one INSERT … SELECT: each targeted device gets its
    phase from its place in id order, never through a Python loop over devices."""
    phases = parse_phases(request.phases)
    threshold = parse_failure_threshold(request.failure_threshold)
    parse_windows(request.windows)  # validated now; evaluated when devices check in
    target = parse_target(request.target)
    if target.live:
        from fleetkeeper.deployments.live import ensure_may_deploy_live  # live.py builds on this module

        ensure_may_deploy_live(principal, str(target.group))
    if not request.name.strip() or len(request.name) > 200:
        raise ProblemError(
            "a deployment needs a name of at most 200 characters", code="invalid_request", status=422
        )
    if not 0 <= request.max_retries <= 10:
        raise ProblemError("max_retries is 0-10", code="invalid_request", status=422)
    if request.max_downloading is not None and request.max_downloading < 1:
        raise ProblemError("max_downloading is at least 1", code="invalid_request", status=422)
    if request.start_at is not None and request.start_at.tzinfo is None:
        raise ProblemError("start_at needs a time zone", code="invalid_request", status=422)
    async with runtime.database.transaction() as session:
        release = await _release(session, request.release_name, request.release_version)
        condition = await _target_condition(session, target)
        # One pass over the target for both its size and a device type the release is not for
        # (two scans of a million devices were a fifth of the time budget).
        counted, incompatible = (
            await session.execute(
                select(
                    func.count(),
                    func.min(case((Device.device_type.not_in(release.device_types), Device.device_type))),
                ).where(condition)
            )
        ).one()
        total = int(counted or 0)
        if total == 0 and not target.live:  # a live target may start empty: devices join later
            raise ProblemError("the target has no accepted device", code="empty_target", status=422)
        if incompatible is not None:
            raise ProblemError(
                f"{release.name} {release.version} is for {', '.join(release.device_types)}; "
                f"the target includes {incompatible} devices",
                code="incompatible_device_type",
                status=422,
            )
        await _ensure_may_deploy_to_all(session, principal, condition)
        now = clock()
        deployment = Deployment(
            id=new_id("dep"),
            name=request.name.strip(),
            release_id=release.id,
            status="scheduled" if request.start_at and request.start_at > now else "active",
            target={"devices": target.devices}
            if target.devices is not None
            else {"group": target.group, "live": target.live},
            phases=[
                {
                    "size": {k: v for k, v in vars(p.size).items() if v is not None},
                    "advance": p.advance,
                    "success_percent": p.success_percent,
                }
                for p in phases
            ],
            current_phase=0,
            failure_threshold=request.failure_threshold or {},
            windows=request.windows or [],
            start_at=request.start_at,
            max_retries=request.max_retries,
            force=request.force,
            max_downloading=request.max_downloading,
            created_by=principal.user_id,
            created_at=now,
        )
        session.add(deployment)
        await session.flush()
        boundaries = phase_boundaries(phases, total)
        phase_of = await _phase_by_device_id(session, condition, boundaries, total)
        await session.execute(
            insert(DeploymentDevice).from_select(
                ["deployment_id", "device_id", "phase", "status", "attempts", "last_seq"],
                select(
                    literal(deployment.id),
                    Device.id,
                    phase_of,
                    literal("pending"),
                    literal(0),
                    literal(0),
                ).where(condition),
            )
        )
        await record(
            session,
            actor=principal.actor,
            action="deployment.created",
            object_type="deployment",
            object_id=deployment.id,
            details={
                "name": deployment.name,
                "release": f"{release.name} {release.version}",
                "target": deployment.target,
                "devices": total,
                "phases": boundaries,
                "failure_threshold": bool(threshold.phase or threshold.overall),
            },
        )
    return deployment


async def phase_counts(runtime: Runtime, deployment_id: str) -> dict[int, dict[str, int]]:
    """Devices per phase and status."""
    async with runtime.database.session() as session:
        rows = await session.execute(
            select(DeploymentDevice.phase, DeploymentDevice.status, func.count())
            .where(DeploymentDevice.deployment_id == deployment_id)
            .group_by(DeploymentDevice.phase, DeploymentDevice.status)
        )
        counts: dict[int, dict[str, int]] = {}
        for phase, status, count in rows:
            counts.setdefault(phase, {})[status] = count
        return counts


# --- the device side ----------------------------------------------------------------------------

# The deployments service reads the time through this, so that tests can move through phases and
# windows without waiting.
clock = utcnow


async def assignment_for(session: AsyncSession, device_id: str) -> tuple[Deployment, Release] | None:
    """The release the device must run now: from its oldest active deployment whose phase is open
    and whose install is not over for this device."""
    now = clock()
    row = (
        await session.execute(
            select(Deployment, Release)
            .join(DeploymentDevice, DeploymentDevice.deployment_id == Deployment.id)
            .join(Release, Release.id == Deployment.release_id)
            .where(
                DeploymentDevice.device_id == device_id,
                # A scheduled deployment is active once its start time has come.
                Deployment.status.in_(("active", "scheduled")),
                (Deployment.start_at.is_(None)) | (Deployment.start_at <= now),
                DeploymentDevice.phase <= Deployment.current_phase,
                DeploymentDevice.status.not_in(FINAL_STATUSES),
                Release.deleted_at.is_(None),
            )
            .order_by(Deployment.created_at, Deployment.id)
            .limit(1)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def report(
    runtime: Runtime, device: Device, deployment_id: str, *, status: str, seq: int, detail: str | None
) -> DeploymentDevice:
    """A device's progress on a deployment: idempotent (the same report again changes nothing)
    and ordered (an older sequence number is refused). Final reports move the deployment on."""
    if status not in DEVICE_STATUSES or status in ("pending", "aborted"):
        raise ProblemError(f"unknown status {status!r}", code="invalid_status", status=422)
    async with runtime.database.transaction() as session:
        entry = await session.get(DeploymentDevice, (deployment_id, device.id), with_for_update=True)
        deployment = await session.get(Deployment, deployment_id, with_for_update=True)
        if entry is None or deployment is None:
            raise NotFoundError("this device is not part of that deployment", code="not_in_deployment")
        if deployment.status == "scheduled" and (
            deployment.start_at is None or deployment.start_at <= clock()
        ):
            deployment.status = "active"
        if seq == entry.last_seq and status == entry.status:
            return entry
        if seq <= entry.last_seq:
            raise ProblemError(
                f"report {seq} is older than the last one received ({entry.last_seq})",
                code="out_of_order",
                status=409,
                last_seq=entry.last_seq,
            )
        if deployment.status == "aborted" and entry.status != "success":
            entry.status = "aborted"
            raise ProblemError(
                "the deployment was aborted: stop and keep what you run",
                code="deployment_aborted",
                status=409,
            )
        if entry.status in FINAL_STATUSES and entry.status != "failure":
            raise ProblemError(
                f"the install already ended ({entry.status})", code="already_final", status=409
            )
        entry.status = status
        entry.last_seq = seq
        entry.detail = (detail or "")[-4000:] or None
        entry.updated_at = clock()
        if status == "failure":
            entry.attempts += 1
            if entry.attempts <= deployment.max_retries:
                entry.status = "pending"  # tried again at its next check-in
        if status in FINAL_STATUSES:
            await record(
                session,
                actor=devices.device_actor(device, None),
                action=f"deployment.device_{status}",
                object_type="deployment",
                object_id=deployment_id,
                details={"device_id": device.id, "seq": seq, "detail": entry.detail},
            )
            await session.flush()
            await _move_on(session, deployment)
    return entry


async def _counts(session: AsyncSession, deployment_id: str, phase: int | None) -> dict[str, int]:
    query = select(DeploymentDevice.status, func.count()).where(
        DeploymentDevice.deployment_id == deployment_id
    )
    if phase is not None:
        query = query.where(DeploymentDevice.phase == phase)
    rows = await session.execute(query.group_by(DeploymentDevice.status))
    return {status: count for status, count in rows}


async def _move_on(session: AsyncSession, deployment: Deployment) -> None:
    """After a final report: pause past a failure threshold, advance a phase that succeeded
    enough, finish when every device is done."""
    from fleetkeeper.deployments.webhooks import enqueue

    threshold = parse_failure_threshold(deployment.failure_threshold)
    phase_counts_now = await _counts(session, deployment.id, deployment.current_phase)
    overall = await _counts(session, deployment.id, None)
    failed_phase = phase_counts_now.get("failure", 0) + phase_counts_now.get("refused", 0)
    failed_all = overall.get("failure", 0) + overall.get("refused", 0)
    crossed = (
        threshold.phase and threshold.phase.exceeded_by(failed_phase, sum(phase_counts_now.values()))
    ) or (threshold.overall and threshold.overall.exceeded_by(failed_all, sum(overall.values())))
    if crossed and deployment.status == "active":
        deployment.status = "paused"
        deployment.pause_reason = (
            f"failure threshold reached: {failed_phase} failed in phase {deployment.current_phase + 1}, "
            f"{failed_all} overall"
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
        deployment.finished_at = clock()
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
    phase = phases[deployment.current_phase]
    succeeded = phase_counts_now.get("success", 0) + phase_counts_now.get("already_installed", 0)
    size = sum(phase_counts_now.values())
    if (
        phase.advance == "auto"
        and deployment.current_phase + 1 < len(phases)
        and size
        and succeeded * 100 >= phase.success_percent * size
    ):
        deployment.current_phase += 1
        await record(
            session,
            actor=SYSTEM,
            action="deployment.phase_advanced",
            object_type="deployment",
            object_id=deployment.id,
            details={"phase": deployment.current_phase + 1, "succeeded": succeeded, "of": size},
        )


def install_window(deployment: Deployment) -> tuple[bool, datetime | None]:
    """Whether the device may install now (it may always download), and when it next may."""
    windows = parse_windows(deployment.windows)
    if not windows:
        return True, None
    now = clock()
    return is_open(windows, now), next_open(windows, now)


async def get(session: AsyncSession, deployment_id: str) -> Deployment:
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFoundError("no such deployment", code="deployment_not_found")
    return deployment


async def change_state(runtime: Runtime, principal: Principal, deployment_id: str, action: str) -> Deployment:
    """pause, resume, abort, or advance (an operator opening the next phase). Needs devices:deploy
    on every device of the deployment."""
    transitions = {
        "pause": ({"active", "scheduled"}, "paused"),
        "resume": ({"paused"}, "active"),
        "abort": ({"active", "paused", "scheduled"}, "aborted"),
        "advance": ({"active", "paused"}, None),
    }
    allowed, target_status = transitions[action]
    async with runtime.database.transaction() as session:
        deployment = await session.get(Deployment, deployment_id, with_for_update=True)
        if deployment is None:
            raise NotFoundError("no such deployment", code="deployment_not_found")
        await _ensure_may_deploy_to_all(
            session,
            principal,
            Device.id.in_(
                select(DeploymentDevice.device_id).where(DeploymentDevice.deployment_id == deployment_id)
            ),
        )
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
        if action == "abort":
            deployment.finished_at = clock()
            # Devices that have not finished are told to stop; those that did stay as they are.
            await session.execute(
                update(DeploymentDevice)
                .where(
                    DeploymentDevice.deployment_id == deployment_id,
                    DeploymentDevice.status.not_in(FINAL_STATUSES),
                )
                .values(status="aborted", updated_at=clock())
            )
        await record(
            session,
            actor=principal.actor,
            action=f"deployment.{action}d" if action != "abort" else "deployment.aborted",
            object_type="deployment",
            object_id=deployment_id,
            details={"phase": deployment.current_phase + 1},
        )
    return deployment

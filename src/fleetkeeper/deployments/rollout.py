"""Creating a rollout: everything checked, then the whole target fanned out to its phases in a
few set-based statements (never a Python loop over devices), with its counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Insert, Integer, Subquery, case, func, insert, literal, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Principal
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import UTCDateTime
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.deployments import clock, installed_release, lifecycle, live, progress, targeting
from fleetkeeper.deployments.chunks import member_ids, write_chunks
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.models import NUMBERS, PENDING, Deployment, DeploymentDevice
from fleetkeeper.deployments.plans import (
    parse_failure_threshold,
    parse_phases,
    parse_target,
    phase_boundaries,
)
from fleetkeeper.deployments.statements import rowcount
from fleetkeeper.deployments.windows import parse_windows
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


def _above(cut: str | None) -> ColumnElement[bool]:
    return Device.id > cut if cut is not None else true()


async def _phase_ranges(
    session: AsyncSession, target: ColumnElement[bool], boundaries: list[int], total: int
) -> list[tuple[int, ColumnElement[bool]]]:
    """Each phase with its devices, as a range of Device.id: the targeted devices in id order, cut
    at the phase boundaries (empty phases left out). The cut points are the ids at those ranks,
    each found by a short OFFSET walk along the devices' primary key from the previous cut, so
    that nothing ranks the whole target (a window sort cost more than half a second per million)."""
    ranges: list[tuple[int, ColumnElement[bool]]] = []
    previous_cut: str | None = None
    previous_boundary = 0
    last_phase = next(index for index, boundary in enumerate(boundaries) if boundary >= total)
    for index, boundary in enumerate(boundaries[:last_phase]):
        if boundary == previous_boundary:
            continue  # an empty phase: nobody is ranked between the same two cuts
        query = select(Device.id).where(target, _above(previous_cut))
        cut = await session.scalar(
            query.order_by(Device.id).offset(boundary - previous_boundary - 1).limit(1)
        )
        if cut is None:  # devices left the target since it was counted: this phase takes the rest
            last_phase = index
            break
        ranges.append((index, _above(previous_cut) & (Device.id <= cut)))
        previous_cut, previous_boundary = cut, boundary
    ranges.append((last_phase, _above(previous_cut)))
    return ranges


async def next_number(session: AsyncSession) -> int:
    """A new deployment's number: from a sequence on PostgreSQL, where creations run side by side;
    on SQLite one more than the highest, under the write lock that the transaction holds."""
    if session.get_bind().dialect.name == "postgresql":
        number = await session.scalar(select(NUMBERS.next_value()))
    else:
        number = await session.scalar(select(func.coalesce(func.max(Deployment.number), 0) + 1))
    assert number is not None
    return int(number)


async def _fan_out(
    session: AsyncSession,
    deployment: Deployment,
    release: Release,
    target: ColumnElement[bool],
    phases: list[tuple[int, ColumnElement[bool]]],
) -> dict[int, dict[str, int]]:
    """The deployment's devices, phase by phase (the phase a constant in each statement), counted
    as they are written: the counters need no second pass over a million rows. Returns the
    devices per phase and status.

    A fixed target is written as chunks of ids (chunks.py, models.DeploymentChunk): 5,000
    rows for a million devices. A live target gets a row per device, as the devices that join it
    later do (live.py keeps those rows in line with the group).

    A device whose inventory says it runs the release already gets its row at once, marked
    `already_installed` (unless the deployment forces a reinstall) — only when the target has
    one: in the usual case, a release new to the target, nothing but the chunks is written. Both
    are exact: a device joining the target meanwhile is in its phase's statements or in none, and
    one installing the release meanwhile is pending, found at its next check-in."""
    running = installed_release.devices_running(release).subquery("running")
    marks_installed = not deployment.force and (
        await session.scalar(
            select(Device.id).where(target, Device.id.in_(select(running.c.device_id))).limit(1)
        )
        is not None
    )
    counts: dict[int, dict[str, int]] = {}
    for phase, in_phase in phases:
        in_target = target & in_phase
        if deployment.target.get("live"):
            counts[phase] = await _write_rows(session, deployment, phase, in_target, running, marks_installed)
            continue
        total = await write_chunks(session, deployment.number, phase, in_target)
        installed = 0
        if marks_installed:
            # Of the devices just written to chunks: one that joined the target since is in none.
            chunked = Device.id.in_(member_ids(session, deployment.number, phase))
            runs_it = in_target & chunked & Device.id.in_(select(running.c.device_id))
            written = await _write_rows(session, deployment, phase, runs_it, running, True)
            installed = written.get("already_installed", 0)
        counts[phase] = {PENDING: total - installed, "already_installed": installed}
    return counts


async def _write_rows(
    session: AsyncSession,
    deployment: Deployment,
    phase: int,
    devices_in_phase: ColumnElement[bool],
    running: Subquery,
    marks_installed: bool,
) -> dict[str, int]:
    """A row per device of `devices_in_phase` in one INSERT … SELECT: pending, or already installed
    (through a LEFT JOIN to the devices running the release, when `marks_installed`). Returns the
    rows written per status."""
    is_running = running.c.device_id.is_not(None)
    columns: dict[str, ColumnElement[Any]] = {
        "deployment_number": literal(deployment.number, Integer),
        "device_id": Device.id.expression,
        "phase": literal(phase, Integer),
        "status": literal(PENDING),
        "attempts": literal(0, Integer),
        "last_seq": literal(0, Integer),
    }
    if marks_installed:
        columns |= {
            "status": case((is_running, literal("already_installed")), else_=literal(PENDING)),
            "detail": case((is_running, literal(installed_release.ALREADY_INSTALLED))),
            "updated_at": case((is_running, literal(clock.now(), UTCDateTime()))),
        }
    rows = select(*columns.values()).select_from(Device)
    if marks_installed:
        rows = rows.outerjoin(running, running.c.device_id == Device.id)
    fan_out = insert(DeploymentDevice).from_select(list(columns), rows.where(devices_in_phase))
    if marks_installed:
        return await _insert_counting_statuses(session, fan_out)
    return {PENDING: rowcount(await session.execute(fan_out))}


async def _insert_counting_statuses(session: AsyncSession, fan_out: Insert) -> dict[str, int]:
    """Runs an INSERT into deployment_devices and counts the rows it wrote by status: on PostgreSQL
    in the same statement (its RETURNING rows, grouped by the database); SQLite cannot take an
    INSERT as a CTE, so there the statuses come back here to be counted (SQLite fleets are small)."""
    returning = fan_out.returning(DeploymentDevice.status)
    if session.get_bind().dialect.name == "postgresql":
        written = returning.cte("written")
        rows = await session.execute(select(written.c.status, func.count()).group_by(written.c.status))
        return {status: count for status, count in rows}
    return dict(Counter(await session.scalars(returning)))


async def create(runtime: DeploymentsContext, principal: Principal, request: DeploymentRequest) -> Deployment:
    """Checks everything, then fans out with one INSERT … SELECT: each targeted device gets its
    phase from its place in id order, never through a Python loop over devices."""
    phases = parse_phases(request.phases)
    threshold = parse_failure_threshold(request.failure_threshold)
    parse_windows(request.windows)  # validated now; evaluated when devices check in
    target = parse_target(request.target)
    if target.live:
        live.ensure_may_deploy_live(principal, str(target.group))
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
        release = await targeting.release(session, principal, request.release_name, request.release_version)
        # Scope first: nothing about a target out of reach is told (targeting.py).
        condition = await targeting.target_devices(session, principal, target)
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
        now = clock.now()
        deployment = Deployment(
            id=new_id("dep"),
            number=await next_number(session),
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
        phase_ranges = await _phase_ranges(session, condition, boundaries, total)
        counts = await _fan_out(session, deployment, release, condition, phase_ranges)
        await progress.initialise_counts(session, deployment.id, counts)
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
                "devices": sum(sum(by_status.values()) for by_status in counts.values()),
                "phases": boundaries,
                "failure_threshold": bool(threshold.phase or threshold.overall),
            },
        )
        already = sum(by_status.get("already_installed", 0) for by_status in counts.values())
        if already:
            await record(
                session,
                actor=SYSTEM,
                action="deployment.already_installed",
                object_type="deployment",
                object_id=deployment.id,
                details={"devices": already},
            )
            await lifecycle.advance(session, deployment)
    return deployment

"""The deployments domain: creating a rollout for a whole fleet in a few set-based statements,
the device side (assignment at check-in, status reports), progress kept in counters, statistics
and each device's history."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Integer,
    Select,
    Subquery,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import BindParameter

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import WRITE_LOCK_UP_FRONT, UTCDateTime, utcnow
from fleetkeeper.core.errors import NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.deployments import targeting
from fleetkeeper.deployments.chunks import chunk_phase, member_ids, members, phase_of, write_chunks
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.models import (
    DEVICE_STATUSES,
    FAILED_STATUSES,
    FINAL_STATUSES,
    IN_PROGRESS_STATUSES,
    NUMBERS,
    PENDING,
    SUCCEEDED_STATUSES,
    UNDER_WAY_STATUSES,
    Deployment,
    DeploymentChunk,
    DeploymentCount,
    DeploymentDevice,
    DeploymentEvent,
    left_pending,
)
from fleetkeeper.deployments.plans import (
    parse_failure_threshold,
    parse_phases,
    parse_target,
    phase_boundaries,
)
from fleetkeeper.deployments.visibility import visible_deployment
from fleetkeeper.deployments.windows import is_open, next_open, parse_windows
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device, DeviceAttribute
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
    running = _devices_running(release).subquery("running")
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
            "detail": case((is_running, literal(_ALREADY_INSTALLED))),
            "updated_at": case((is_running, literal(clock(), UTCDateTime()))),
        }
    rows = select(*columns.values()).select_from(Device)
    if marks_installed:
        rows = rows.outerjoin(running, running.c.device_id == Device.id)
    fan_out = insert(DeploymentDevice).from_select(list(columns), rows.where(devices_in_phase))
    if marks_installed:
        return await _insert_counting_statuses(session, fan_out)
    return {PENDING: _rowcount(await session.execute(fan_out))}


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


def _rowcount(result: Any) -> int:
    """Rows written by an INSERT … SELECT or UPDATE (a CursorResult's, typed loosely by execute)."""
    return int(getattr(result, "rowcount", 0) or 0)


async def create(runtime: DeploymentsContext, principal: Principal, request: DeploymentRequest) -> Deployment:
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
        now = clock()
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
        await _initialise_counts(session, deployment.id, counts)
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
            await _move_on(session, deployment)
    return deployment


# --- progress counters --------------------------------------------------------------------------
#
# deployment_counts holds, per deployment, phase and status, how many devices are there. Every
# change of a device's status moves one count in the same transaction; set-based changes (the
# fan-out, abort) move whole counts. Writers of one deployment's counts hold its row lock
# (report, abort, the already-installed check) or created it (the fan-out), so that two of them
# never race on one count.


def _upsert(session: AsyncSession) -> Any:
    """The dialect's INSERT with ON CONFLICT (PostgreSQL and SQLite spell it the same way)."""
    return postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def add_to_counts(
    session: AsyncSession, deployment_id: str, phase: int, status: str, delta: int
) -> None:
    """Adds `delta` (negative: removes) devices to one count. For code that adds or removes rows
    of deployment_devices after the fan-out."""
    if delta == 0:
        return
    insert_ = _upsert(session)(DeploymentCount).values(
        deployment_id=deployment_id, phase=phase, status=status, count=delta
    )
    await session.execute(
        insert_.on_conflict_do_update(
            index_elements=["deployment_id", "phase", "status"],
            set_={"count": DeploymentCount.count + insert_.excluded.count},
        )
    )


async def _move_count(session: AsyncSession, deployment_id: str, phase: int, old: str, new: str) -> None:
    if old == new:
        return
    await session.execute(
        update(DeploymentCount)
        .where(
            DeploymentCount.deployment_id == deployment_id,
            DeploymentCount.phase == phase,
            DeploymentCount.status == old,
        )
        .values(count=DeploymentCount.count - 1)
    )
    await add_to_counts(session, deployment_id, phase, new, 1)


async def _initialise_counts(
    session: AsyncSession, deployment_id: str, counts: dict[int, dict[str, int]]
) -> None:
    """The counters of a new deployment, from what its fan-out wrote per phase and status."""
    rows = [
        {"deployment_id": deployment_id, "phase": phase, "status": status, "count": count}
        for phase, by_status in counts.items()
        for status, count in by_status.items()
        if count
    ]
    if rows:
        await session.execute(insert(DeploymentCount), rows)


async def counts_of(session: AsyncSession, deployment_id: str) -> dict[int, dict[str, int]]:
    """Devices per phase and status, from the counters (statuses with no device left out)."""
    rows = await session.execute(
        select(DeploymentCount.phase, DeploymentCount.status, DeploymentCount.count).where(
            DeploymentCount.deployment_id == deployment_id, DeploymentCount.count != 0
        )
    )
    counts: dict[int, dict[str, int]] = {}
    for phase, status, count in rows:
        counts.setdefault(phase, {})[status] = count
    return counts


async def counts_of_many(
    session: AsyncSession, deployment_ids: Sequence[str]
) -> dict[str, dict[int, dict[str, int]]]:
    """counts_of for several deployments in one query (a list page)."""
    rows = await session.execute(
        select(
            DeploymentCount.deployment_id,
            DeploymentCount.phase,
            DeploymentCount.status,
            DeploymentCount.count,
        ).where(DeploymentCount.deployment_id.in_(deployment_ids), DeploymentCount.count != 0)
    )
    counts: dict[str, dict[int, dict[str, int]]] = {deployment_id: {} for deployment_id in deployment_ids}
    for deployment_id, phase, status, count in rows:
        counts[deployment_id].setdefault(phase, {})[status] = count
    return counts


async def recount(session: AsyncSession, deployment_id: str) -> dict[int, dict[str, int]]:
    """Devices per phase and status counted over the deployment's rows: what the counters must say
    (for tests and repairs; at a million devices this is a full scan of the deployment)."""
    deployment = await get(session, deployment_id)
    rows = await session.execute(
        select(DeploymentDevice.phase, DeploymentDevice.status, func.count())
        .where(DeploymentDevice.deployment_number == deployment.number)
        .group_by(DeploymentDevice.phase, DeploymentDevice.status)
    )
    counts: dict[int, dict[str, int]] = {}
    for phase, status, count in rows:
        counts.setdefault(phase, {})[status] = count
    joined, device_id = members(session)
    untouched = await session.execute(
        select(DeploymentChunk.phase, func.count())
        .select_from(joined)
        .where(
            DeploymentChunk.deployment_number == deployment.number,
            _without_row(device_id),
        )
        .group_by(DeploymentChunk.phase)
    )
    status = _untouched_status(deployment)
    for phase, count in untouched:
        by_status = counts.setdefault(phase, {})
        by_status[status] = by_status.get(status, 0) + count
    return counts


async def phase_counts(runtime: DeploymentsContext, deployment_id: str) -> dict[int, dict[str, int]]:
    """Devices per phase and status."""
    async with runtime.database.session() as session:
        return await counts_of(session, deployment_id)


# --- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where the devices of a phase (or of the whole deployment) stand."""

    counts: dict[str, int]
    total: int
    succeeded: int
    failed: int
    in_progress: int
    pending: int
    aborted: int
    percent_done: float

    @classmethod
    def of(cls, counts: dict[str, int]) -> Progress:
        total = sum(counts.values())
        done = sum(count for status, count in counts.items() if status in FINAL_STATUSES)
        return cls(
            counts=dict(sorted(counts.items())),
            total=total,
            succeeded=sum(counts.get(status, 0) for status in SUCCEEDED_STATUSES),
            failed=sum(counts.get(status, 0) for status in FAILED_STATUSES),
            in_progress=sum(counts.get(status, 0) for status in IN_PROGRESS_STATUSES),
            pending=counts.get("pending", 0),
            aborted=counts.get("aborted", 0),
            percent_done=round(done * 100 / total, 1) if total else 0.0,
        )


@dataclass(frozen=True)
class Statistics:
    overall: Progress
    phases: list[Progress]  # in phase order, one per phase of the plan


def statistics(deployment: Deployment, counts: dict[int, dict[str, int]]) -> Statistics:
    overall: dict[str, int] = {}
    for by_status in counts.values():
        for status, count in by_status.items():
            overall[status] = overall.get(status, 0) + count
    return Statistics(
        overall=Progress.of(overall),
        phases=[Progress.of(counts.get(index, {})) for index in range(len(deployment.phases))],
    )


def started_at(deployment: Deployment) -> datetime | None:
    """When devices could first be told to install: at creation, or at the scheduled start."""
    if deployment.start_at is None:
        return deployment.created_at
    return max(deployment.start_at, deployment.created_at) if deployment.start_at <= clock() else None


@dataclass(frozen=True)
class FleetHealth:
    """Accepted devices (that the caller may read) judged by their newest deployment, the newest
    active, paused or finished one they are part of (scheduled and aborted ones do not count):
    `failing` when it ended in failure or was refused on the device (a failed install rolls
    back, so rolled-back devices are here); `outdated` when its release is not installed on them
    yet (not success or already installed), failing ones included."""

    failing: int
    outdated: int


async def fleet_health(session: AsyncSession, principal: Principal) -> FleetHealth:
    """One pass over the deployment rows of the fleet (a full scan at scale: it serves the dashboard,
    not a check-in)."""
    joined, member = members(session)
    states = union_all(
        select(DeploymentDevice.deployment_number, DeploymentDevice.device_id, DeploymentDevice.status),
        # Devices of chunks without a row are pending (those of aborted deployments are left out).
        select(DeploymentChunk.deployment_number, member, literal(PENDING))
        .select_from(joined)
        .where(_without_row(member)),
    ).subquery("states")
    newest = (
        select(
            states.c.device_id,
            states.c.status,
            func.row_number()
            .over(
                partition_by=states.c.device_id,
                order_by=(Deployment.created_at.desc(), Deployment.id.desc()),
            )
            .label("rank"),
        )
        .join(Deployment, Deployment.number == states.c.deployment_number)
        .where(Deployment.status.in_((*UNDER_WAY_STATUSES, "finished")))
        .subquery()
    )
    scope = await devices.scope_condition(session, principal, Permission.DEVICES_READ)
    failing = func.coalesce(func.sum(case((newest.c.status.in_(FAILED_STATUSES), 1), else_=0)), 0)
    outdated = func.coalesce(func.sum(case((newest.c.status.in_(SUCCEEDED_STATUSES), 0), else_=1)), 0)
    row = (
        await session.execute(
            select(failing, outdated)
            .select_from(newest.join(Device, Device.id == newest.c.device_id))
            .where(newest.c.rank == 1, Device.status == "accepted", scope)
        )
    ).one()
    return FleetHealth(failing=int(row[0]), outdated=int(row[1]))


# A dashboard refreshes every few seconds and the pass above reads every deployment row of the
# fleet: for a large fleet it is computed at most this often per process and reader's scope.
FLEET_HEALTH_MAX_AGE = 30.0
_recent_health: dict[tuple[int, object], tuple[float, FleetHealth]] = {}


async def recent_fleet_health(session: AsyncSession, principal: Principal) -> FleetHealth:
    """`fleet_health`, at most FLEET_HEALTH_MAX_AGE seconds old."""
    key = (id(session.bind), principal.grants.scopes(Permission.DEVICES_READ))
    now = time.monotonic()
    cached = _recent_health.get(key)
    if cached is not None and now - cached[0] < FLEET_HEALTH_MAX_AGE:
        return cached[1]
    health = await fleet_health(session, principal)
    if len(_recent_health) > 1000:
        _recent_health.clear()
    _recent_health[key] = (now, health)
    return health


# --- listing devices and history ----------------------------------------------------------------

MAX_PAGE = 500


def _encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, length: int) -> list[str]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != length or not all(isinstance(v, str) for v in values):
        raise ProblemError("the cursor is not one this server gave out", code="invalid_cursor")
    return values


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ProblemError(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")


@dataclass(frozen=True)
class DevicesPage:
    items: Sequence[DeploymentDevice]
    next_cursor: str | None


async def list_devices(
    session: AsyncSession,
    principal: Principal,
    deployment_id: str,
    *,
    status: str | None = None,
    phase: int | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> DevicesPage:
    """The devices of a deployment the caller may read, by status then device id, in keyset pages
    (a device whose status changes between two pages may be seen twice or not at all, as in any
    live listing). `phase` counts from 0 here (the API shows phases from 1)."""
    _check_limit(limit)
    deployment = await visible_deployment(session, principal, deployment_id)
    if status is not None and status not in DEVICE_STATUSES:
        raise ProblemError(
            f"unknown status {status!r}; one of {', '.join(DEVICE_STATUSES)}",
            code="invalid_status",
            status=422,
        )
    if phase is not None and not 0 <= phase < len(deployment.phases):
        raise ProblemError(
            f"this deployment has phases 1 to {len(deployment.phases)}", code="invalid_phase", status=422
        )
    after: tuple[str, str] | None = None
    if cursor is not None:
        after_status, after_id = _decode_cursor(cursor, 2)
        if after_status not in DEVICE_STATUSES:
            raise ProblemError("the cursor is not one this server gave out", code="invalid_cursor")
        after = (after_status, after_id)
    scope = None
    if principal.grants.scopes(Permission.DEVICES_READ) is not None:
        # Scoped readers see the devices of their groups only (the join is skipped for the others).
        scope = await devices.scope_condition(session, principal, Permission.DEVICES_READ)
    # One status at a time, in order, each read in device order through an index: pending rows
    # through the key (the status index leaves them out, see DeploymentDevice), the others through
    # the status index. Statuses the counters show empty are not looked at.
    counts = await counts_of(session, deployment_id)
    in_view = [counts.get(phase, {})] if phase is not None else list(counts.values())
    present = {name for by_status in in_view for name in by_status}
    wanted = [status] if status is not None else sorted(DEVICE_STATUSES)
    items: list[DeploymentDevice] = []
    more = False
    for name in wanted:
        if name not in present or (after is not None and name < after[0]):
            continue
        query = select(DeploymentDevice).where(
            DeploymentDevice.deployment_number == deployment.number, DeploymentDevice.status == name
        )
        if name != PENDING:
            query = query.where(left_pending(DeploymentDevice.status))
        if phase is not None:
            query = query.where(DeploymentDevice.phase == phase)
        resume_after = after[1] if after is not None and name == after[0] else None
        if resume_after is not None:
            query = query.where(DeploymentDevice.device_id > resume_after)
        if scope is not None:
            query = query.join(Device, Device.id == DeploymentDevice.device_id).where(scope)
        wanted_rows = limit + 1 - len(items)
        query = query.order_by(DeploymentDevice.device_id).limit(wanted_rows)
        found = list((await session.scalars(query)).all())
        if name == _untouched_status(deployment):  # and the chunks' devices without a row
            found += await _untouched(session, deployment, phase, resume_after, scope, wanted_rows)
            found = sorted(found, key=lambda entry: entry.device_id)[:wanted_rows]
        items += found
        if len(items) > limit:
            more = True
            items = items[:limit]
            break
    next_cursor = _encode_cursor([items[-1].status, items[-1].device_id]) if more else None
    return DevicesPage(items, next_cursor)


async def _untouched(
    session: AsyncSession,
    deployment: Deployment,
    phase: int | None,
    after_id: str | None,
    scope: ColumnElement[bool] | None,
    limit: int,
) -> list[DeploymentDevice]:
    """The first `limit` devices of the deployment's chunks that have no row, in id order, as rows
    (not in the session)."""
    joined, device_id = members(session)
    query = (
        select(device_id, DeploymentChunk.phase)
        .select_from(joined)
        .where(
            DeploymentChunk.deployment_number == deployment.number,
            _without_row(device_id),
        )
    )
    if phase is not None:
        query = query.where(DeploymentChunk.phase == phase)
    if after_id is not None:
        query = query.where(DeploymentChunk.last_device_id > after_id, device_id > after_id)
    if scope is not None:
        query = query.join(Device, Device.id == device_id).where(scope)
    # Chunk by chunk (they never overlap), each chunk's ids sorted: its array is in no set order.
    rows = await session.execute(query.order_by(DeploymentChunk.first_device_id, device_id).limit(limit))
    return [_untouched_entry(deployment, member, member_phase) for member, member_phase in rows]


@dataclass(frozen=True)
class DeviceDeploymentsPage:
    items: Sequence[tuple[Deployment, DeploymentDevice]]
    next_cursor: str | None


async def deployments_of_device(
    session: AsyncSession, principal: Principal, device_id: str, *, limit: int = 50, cursor: str | None = None
) -> DeviceDeploymentsPage:
    """The deployments a device is part of, newest first, each with where the device stands.
    devices:read on the device (outside the caller's groups: 404, as for other device reads)."""
    _check_limit(limit)
    await devices.device_for(session, principal, device_id, Permission.DEVICES_READ)
    # The device's row in each deployment is found through the key (deployment, device), one
    # probe per deployment from the newest, until the page is full: deployment_devices has no
    # index that leads with the device (see DeploymentDevice). On PostgreSQL a plain join let the
    # planner scan all of deployment_devices instead (0.4 s for 2 million rows and 10,000
    # deployments); the LATERAL subquery, limited to the one row there is, keeps the probe. A
    # deployment where the device has no row may hold it in a chunk: two more probes.
    in_chunk = chunk_phase(Deployment.number, literal(device_id))
    if session.get_bind().dialect.name == "postgresql":
        row_of_device = (
            select(DeploymentDevice)
            .where(
                DeploymentDevice.deployment_number == Deployment.number,
                DeploymentDevice.device_id == device_id,
            )
            .limit(1)
            .lateral()
        )
        row = aliased(DeploymentDevice, row_of_device)
        query = select(Deployment, row, in_chunk).outerjoin(row_of_device, true())
    else:
        row = DeploymentDevice
        query = select(Deployment, row, in_chunk).outerjoin(
            row, (row.deployment_number == Deployment.number) & (row.device_id == device_id)
        )
    query = query.where(row.device_id.is_not(None) | in_chunk.is_not(None))
    if cursor is not None:
        created, last_id = _decode_cursor(cursor, 2)
        try:
            created_at = datetime.fromisoformat(created)
        except ValueError:
            raise ProblemError("the cursor is not one this server gave out", code="invalid_cursor") from None
        query = query.where(
            (Deployment.created_at < created_at)
            | ((Deployment.created_at == created_at) & (Deployment.id < last_id))
        )
    rows = (
        await session.execute(
            query.order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(limit + 1)
        )
    ).all()
    items = [
        (
            deployment,
            entry if entry is not None else _untouched_entry(deployment, device_id, chunk),
        )
        for deployment, entry, chunk in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1][0]
        next_cursor = _encode_cursor([last.created_at.isoformat(), last.id])
    return DeviceDeploymentsPage(items, next_cursor)


async def recent_events(
    session: AsyncSession, principal: Principal, deployment_id: str, *, limit: int = 20
) -> Sequence[DeploymentEvent]:
    """The newest status reports of the deployment's devices the caller may read, newest first."""
    _check_limit(limit)
    await visible_deployment(session, principal, deployment_id)
    query = select(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment_id)
    if principal.grants.scopes(Permission.DEVICES_READ) is not None:
        scope = await devices.scope_condition(session, principal, Permission.DEVICES_READ)
        query = query.join(Device, Device.id == DeploymentEvent.device_id).where(scope)
    return (
        await session.scalars(
            query.order_by(DeploymentEvent.created_at.desc(), DeploymentEvent.seq.desc()).limit(limit)
        )
    ).all()


async def device_history(
    session: AsyncSession, principal: Principal, deployment_id: str, device_id: str
) -> tuple[DeploymentDevice, Sequence[DeploymentEvent]]:
    """One device's row in a deployment and every report it made on it, oldest first."""
    await devices.device_for(session, principal, device_id, Permission.DEVICES_READ)
    deployment = await visible_deployment(session, principal, deployment_id)
    entry = await session.get(DeploymentDevice, (deployment.number, device_id))
    if entry is None:
        chunk = await phase_of(session, deployment.number, device_id)
        if chunk is None:
            raise NotFoundError("this device is not part of that deployment", code="not_in_deployment")
        entry = _untouched_entry(deployment, device_id, chunk)
    events = (
        await session.scalars(
            select(DeploymentEvent)
            .where(DeploymentEvent.deployment_id == deployment_id, DeploymentEvent.device_id == device_id)
            .order_by(DeploymentEvent.seq)
        )
    ).all()
    return entry, events


# --- the device side ----------------------------------------------------------------------------

# The deployments service reads the time through this, so that tests can move through phases and
# windows without waiting.
clock = utcnow

# A device in `downloading` holds one of its deployment's download slots (max_downloading) until
# it reports again; one silent for longer than this no longer does, so that a dead device does not
# hold a slot forever.
DOWNLOAD_SLOT_HELD_FOR = timedelta(minutes=30)

# Inventory keys (docs/device-api.md) by which a device says which release it runs: `release`:
# {"name", "version"} in its inventory report, indexed as these attributes.
RELEASE_NAME_KEY = "release.name"
RELEASE_VERSION_KEY = "release.version"
_ALREADY_INSTALLED = "the device's inventory reports this release as installed"


def _devices_running(release: Release) -> Select[Any]:
    """Ids of the devices whose inventory names this release as the one installed."""
    version = aliased(DeviceAttribute)
    return (
        select(DeviceAttribute.device_id)
        .join(
            version,
            (version.device_id == DeviceAttribute.device_id)
            & (version.key == RELEASE_VERSION_KEY)
            & (version.value_text == release.version),
        )
        .where(DeviceAttribute.key == RELEASE_NAME_KEY, DeviceAttribute.value_text == release.name)
    )


@dataclass(frozen=True)
class Assignment:
    """What a check-in finds for a device: its oldest open deployment, and whether the device waits
    for a download slot (`queued`: nothing is assigned from it yet)."""

    deployment: Deployment
    release: Release
    queued: bool


@functools.cache
def _assignment_query() -> Select[Any]:
    """One read: the device's oldest active deployment whose phase is open and whose install is
    not over for it, with the two facts a still-pending device needs, each computed only for it:
    how many devices hold a download slot (when the deployment caps them), and whether its
    inventory says it runs the release already (unless the deployment forces a reinstall).

    Built once, with parameters `device_id`, `now` and `slot_since`: building it took longer
    than running it (the aliases and expressions of a statement this size)."""
    downloading, installed = _slot_and_installed()
    phase, status = _membership()
    pending = status == PENDING
    return _open_deployment(
        Deployment,
        Release,
        phase,
        case((Deployment.max_downloading.is_not(None) & pending, downloading)).label("downloading"),
        case((~Deployment.force & pending & installed, literal(True)), else_=literal(False)).label(
            "installed"
        ),
    )


@functools.cache
def check_in_assignment() -> Subquery:
    """`_assignment_query` as a subquery of a check-in's single statement, with the same
    parameters (`check_in_parameters`): at most one row, the assigned release's `target_path`,
    `queued` when the device waits for a download slot, and `installed` when its inventory
    already reports the release — then the check-in must take `assignment_for`, which records
    that and looks at the next deployment."""
    downloading, installed = _slot_and_installed()
    pending = _membership()[1] == PENDING
    no_slot = Deployment.max_downloading.is_not(None) & pending & (downloading >= Deployment.max_downloading)
    return _open_deployment(
        Release.target_path.label("target_path"),
        case((no_slot, literal(True)), else_=literal(False)).label("queued"),
        case((~Deployment.force & pending & installed, literal(True)), else_=literal(False)).label(
            "installed"
        ),
    ).subquery("assignment")


def check_in_parameters(device_id: str) -> dict[str, Any]:
    now = clock()
    return {"device_id": device_id, "now": now, "slot_since": now - DOWNLOAD_SLOT_HELD_FOR}


def _slot_and_installed() -> tuple[ColumnElement[int], ColumnElement[bool]]:
    """How many devices hold a download slot of the deployment, and whether the device's
    inventory names the release (parameters `device_id` and `slot_since`)."""
    slot_holders = aliased(DeploymentDevice)
    name, version = aliased(DeviceAttribute), aliased(DeviceAttribute)
    downloading = (
        select(func.count())
        .select_from(slot_holders)
        .where(
            slot_holders.deployment_number == Deployment.number,
            slot_holders.status == "downloading",
            left_pending(slot_holders.status),
            slot_holders.updated_at >= bindparam("slot_since"),
        )
        .scalar_subquery()
    )
    installed = (
        select(literal(1))
        .select_from(name)
        .join(
            version,
            (version.device_id == name.device_id)
            & (version.key == RELEASE_VERSION_KEY)
            & (version.value_text == Release.version),
        )
        .where(
            name.device_id == bindparam("device_id"),
            name.key == RELEASE_NAME_KEY,
            name.value_text == Release.name,
        )
        .exists()
    )
    return downloading, installed


@functools.cache
def _membership() -> tuple[ColumnElement[int], ColumnElement[str]]:
    """The device's phase and status in a deployment of the check-in's query (parameter
    `device_id`): from its row when it has one, else from the chunk that holds it (pending; no
    phase when no chunk does: the device is not in the deployment)."""
    device_id: BindParameter[str] = bindparam("device_id", type_=DeploymentDevice.device_id.type)
    return (
        func.coalesce(DeploymentDevice.phase, chunk_phase(Deployment.number, device_id)),
        func.coalesce(DeploymentDevice.status, literal(PENDING)),
    )


def _open_deployment(*columns: Any) -> Select[Any]:
    device_id: BindParameter[str] = bindparam("device_id")
    now: BindParameter[datetime] = bindparam("now")
    phase, status = _membership()
    return (
        select(*columns)
        .select_from(Deployment)
        .join(Release, Release.id == Deployment.release_id)
        .outerjoin(
            DeploymentDevice,
            (DeploymentDevice.deployment_number == Deployment.number)
            & (DeploymentDevice.device_id == device_id),
        )
        .where(
            # A scheduled deployment is active once its start time has come. The lists are of
            # literals: a list of values would be an expanding parameter, re-rendered at each run.
            Deployment.status.in_([literal("active"), literal("scheduled")]),
            (Deployment.start_at.is_(None)) | (Deployment.start_at <= now),
            phase <= Deployment.current_phase,
            status.not_in([literal(final) for final in FINAL_STATUSES]),
            Release.deleted_at.is_(None),
        )
        .order_by(Deployment.created_at, Deployment.id)
        .limit(1)
    )


async def current_assignment(session: AsyncSession, device_id: str) -> Assignment | None:
    """The device's oldest open deployment, queued or not. A still-pending device that already
    runs the release (and the deployment does not force) is marked `already_installed` here — the
    only write a check-in can make, once per device and deployment — and the next one is looked at.

    `session` must not be in a write transaction: the already-installed mark commits on it."""
    while True:
        row = (await session.execute(_assignment_query(), check_in_parameters(device_id))).first()
        if row is None:
            return None
        deployment, release, phase, downloading, installed = row
        if installed:
            await _mark_already_installed(session, deployment.id, device_id, phase)
            continue
        queued = downloading is not None and downloading >= (deployment.max_downloading or 0)
        return Assignment(deployment, release, queued)


async def assignment_for(session: AsyncSession, device_id: str) -> tuple[Deployment, Release] | None:
    """The release the device must run now, for its director metadata: from its oldest active
    deployment whose phase is open and whose install is not over for this device; nothing while
    the device waits for a download slot of that deployment."""
    found = await current_assignment(session, device_id)
    if found is None or found.queued:
        return None
    return found.deployment, found.release


async def _mark_already_installed(
    session: AsyncSession, deployment_id: str, device_id: str, phase: int
) -> None:
    # End the check-in's read transaction: the write is a transaction of its own, on SQLite one that
    # takes the write lock up front like Database.transaction (a read snapshot cannot be upgraded
    # once another writer committed), and it locks the deployment before the device's row, the
    # order report and abort lock them in.
    await session.commit()
    async with session.begin():
        await session.connection(execution_options={WRITE_LOCK_UP_FRONT: True})
        deployment = await session.get(
            Deployment, deployment_id, with_for_update=True, populate_existing=True
        )
        if deployment is None:
            return
        result = await session.execute(
            update(DeploymentDevice)
            .where(
                DeploymentDevice.deployment_number == deployment.number,
                DeploymentDevice.device_id == device_id,
                DeploymentDevice.status == "pending",
            )
            .values(status="already_installed", detail=_ALREADY_INSTALLED, updated_at=clock())
            .execution_options(synchronize_session=False)
        )
        if not _rowcount(result) and await _untouched_in_chunk(session, deployment, device_id):
            result = await session.execute(
                _upsert(session)(DeploymentDevice)
                .values(
                    _untouched_columns(deployment.number, device_id, phase, "already_installed")
                    | {"detail": _ALREADY_INSTALLED, "updated_at": clock()}
                )
                .on_conflict_do_nothing()
            )
        if not _rowcount(result):
            return  # the device reported in between (its report wins), or it is pending here no more
        await _move_count(session, deployment_id, phase, "pending", "already_installed")
        await record(
            session,
            actor=SYSTEM,
            action="deployment.device_already_installed",
            object_type="deployment",
            object_id=deployment_id,
            details={"device_id": device_id, "found_at": "check-in"},
        )
        await _move_on(session, deployment)


async def report(
    runtime: DeploymentsContext,
    device: Device,
    deployment_id: str,
    *,
    status: str,
    seq: int,
    detail: str | None,
) -> DeploymentDevice:
    """A device's progress on a deployment: idempotent (the same report again changes nothing)
    and ordered (an older sequence number is refused). Each accepted report moves the counters and
    is kept in the history; final reports move the deployment on."""
    if status not in DEVICE_STATUSES or status in ("pending", "aborted"):
        raise ProblemError(f"unknown status {status!r}", code="invalid_status", status=422)
    async with runtime.database.transaction() as session:
        # The deployment first, then the device's row: the order abort locks them in.
        deployment = await session.get(Deployment, deployment_id, with_for_update=True)
        entry = await _row_to_report_on(session, deployment, device.id) if deployment is not None else None
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
            raise ProblemError(
                "the deployment was aborted: stop and keep what you run",
                code="deployment_aborted",
                status=409,
            )
        if entry.status in FINAL_STATUSES and entry.status != "failure":
            raise ProblemError(
                f"the install already ended ({entry.status})", code="already_final", status=409
            )
        previous = entry.status
        now = clock()
        entry.status = status
        entry.last_seq = seq
        entry.detail = (detail or "")[-DETAIL_KEPT:] or None
        entry.updated_at = now
        if status == "failure":
            entry.attempts += 1
            if entry.attempts <= deployment.max_retries:
                entry.status = "pending"  # tried again at its next check-in
        session.add(
            DeploymentEvent(
                deployment_id=deployment_id,
                device_id=device.id,
                seq=seq,
                status=status,
                detail=entry.detail,
                created_at=now,
            )
        )
        await session.flush()
        await _move_count(session, deployment_id, entry.phase, previous, entry.status)
        if status in FINAL_STATUSES:
            await record(
                session,
                actor=devices.device_actor(device, None),
                action=f"deployment.device_{status}",
                object_type="deployment",
                object_id=deployment_id,
                details={"device_id": device.id, "seq": seq, "detail": entry.detail},
            )
            await _move_on(session, deployment)
    return entry


async def _row_to_report_on(
    session: AsyncSession, deployment: Deployment, device_id: str
) -> DeploymentDevice | None:
    """The device's row in the deployment, locked; written first (pending) when the device is in
    one of the deployment's chunks and has no row yet. None: the device is not in it."""
    key = (deployment.number, device_id)
    entry = await session.get(DeploymentDevice, key, with_for_update=True)
    if entry is not None:
        return entry
    phase = await phase_of(session, deployment.number, device_id)
    if phase is None:
        return None
    await session.execute(
        _upsert(session)(DeploymentDevice)
        .values(**_untouched_columns(deployment.number, device_id, phase, PENDING))
        .on_conflict_do_nothing()  # a report of the same device in between wrote it: it is locked below
    )
    return await session.get(DeploymentDevice, key, with_for_update=True, populate_existing=True)


def _untouched_columns(deployment_number: int, device_id: str, phase: int, status: str) -> dict[str, Any]:
    """A device's row before anything happened to it: the row a chunk's device is written with,
    and how one without a row is shown."""
    return {
        "deployment_number": deployment_number,
        "device_id": device_id,
        "phase": phase,
        "status": status,
        "attempts": 0,
        "last_seq": 0,
        "updated_at": None,
        "detail": None,
    }


async def _untouched_in_chunk(session: AsyncSession, deployment: Deployment, device_id: str) -> bool:
    """The device has no row, only its chunk, in a deployment that is not aborted: its first row
    may be written. (After an abort, or once a live deployment dropped its row, it may not.)"""
    return (
        deployment.status != "aborted" and await phase_of(session, deployment.number, device_id) is not None
    )


def _without_row(device_id: ColumnElement[str]) -> ColumnElement[bool]:
    """A chunk's device `device_id` has no row in the chunk's deployment: untouched."""
    return ~(
        select(DeploymentDevice.device_id)
        .where(
            DeploymentDevice.deployment_number == DeploymentChunk.deployment_number,
            DeploymentDevice.device_id == device_id,
        )
        .exists()
    )


def _untouched_status(deployment: Deployment) -> str:
    """The status of a chunk's device without a row: pending, or aborted with its deployment
    (abort moves the rows' statuses and every count, not the chunks)."""
    return "aborted" if deployment.status == "aborted" else PENDING


def _untouched_entry(deployment: Deployment, device_id: str, phase: int) -> DeploymentDevice:
    """How a chunk's device without a row is shown: a row (not in the session), untouched."""
    return DeploymentDevice(
        **_untouched_columns(deployment.number, device_id, phase, _untouched_status(deployment))
    )


# The end of a device's log (detail) kept with its row and each history event.
DETAIL_KEPT = 4000


async def _failures_now(session: AsyncSession, deployment: Deployment) -> dict[str, int]:
    counts = await counts_of(session, deployment.id)
    return {
        "phase": deployment.current_phase,
        "in_phase": sum(
            counts.get(deployment.current_phase, {}).get(status, 0) for status in FAILED_STATUSES
        ),
        "overall": sum(
            by_status.get(status, 0) for by_status in counts.values() for status in FAILED_STATUSES
        ),
    }


async def _move_on(session: AsyncSession, deployment: Deployment) -> None:
    """After final reports: pause past a failure threshold, advance phases that succeeded
    enough, finish when every device is done. Reads the counters, never the device rows."""
    from fleetkeeper.deployments.webhooks import enqueue

    threshold = parse_failure_threshold(deployment.failure_threshold)
    counts = await counts_of(session, deployment.id)
    overall: dict[str, int] = {}
    for by_status in counts.values():
        for status, count in by_status.items():
            overall[status] = overall.get(status, 0) + count
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
        await targeting.ensure_may_deploy_to_all(session, principal, _devices_of(session, deployment))
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
            deployment.finished_at = clock()
            # Devices that have not finished are told to stop; those that did stay as they are.
            await session.execute(
                update(DeploymentDevice)
                .where(
                    DeploymentDevice.deployment_number == deployment.number,
                    DeploymentDevice.status.not_in(FINAL_STATUSES),
                )
                .values(status="aborted", updated_at=clock())
                .execution_options(synchronize_session=False)
            )
            await _abort_counts(session, deployment_id)
        await record(
            session,
            actor=principal.actor,
            action=f"deployment.{action}d" if action != "abort" else "deployment.aborted",
            object_type="deployment",
            object_id=deployment_id,
            details={"phase": deployment.current_phase + 1},
        )
    return deployment


def _devices_of(session: AsyncSession, deployment: Deployment) -> ColumnElement[bool]:
    """The devices of the deployment (a condition on Device): those with a row, and its chunks'."""
    return Device.id.in_(
        select(DeploymentDevice.device_id).where(DeploymentDevice.deployment_number == deployment.number)
    ) | Device.id.in_(member_ids(session, deployment.number))


async def _abort_counts(session: AsyncSession, deployment_id: str) -> None:
    """Abort's set-based update, on the counters: every count of a status not final moves to
    `aborted` in its phase (a few rows per phase, whatever the number of devices)."""
    moving = (
        await session.execute(
            select(DeploymentCount.phase, DeploymentCount.status, DeploymentCount.count).where(
                DeploymentCount.deployment_id == deployment_id,
                DeploymentCount.status.not_in(FINAL_STATUSES),
                DeploymentCount.count != 0,
            )
        )
    ).all()
    aborted_per_phase: dict[int, int] = {}
    for phase, _status, count in moving:
        aborted_per_phase[phase] = aborted_per_phase.get(phase, 0) + count
    await session.execute(
        update(DeploymentCount)
        .where(DeploymentCount.deployment_id == deployment_id, DeploymentCount.status.not_in(FINAL_STATUSES))
        .values(count=0)
    )
    for phase, count in aborted_per_phase.items():
        await add_to_counts(session, deployment_id, phase, "aborted", count)

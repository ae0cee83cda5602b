"""Statistics of deployments: where the devices of a phase or a whole deployment stand (from the
counters), and the fleet's health by each device's newest deployment (cached for the dashboard)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.deployments import clock
from fleetkeeper.deployments.chunks import members
from fleetkeeper.deployments.device_rows import has_no_row
from fleetkeeper.deployments.models import (
    FAILED_STATUSES,
    FINAL_STATUSES,
    IN_PROGRESS_STATUSES,
    PENDING,
    SUCCEEDED_STATUSES,
    UNDER_WAY_STATUSES,
    Deployment,
    DeploymentChunk,
    DeploymentDevice,
)
from fleetkeeper.deployments.progress import overall
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device


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
    return Statistics(
        overall=Progress.of(overall(counts)),
        phases=[Progress.of(counts.get(index, {})) for index in range(len(deployment.phases))],
    )


def started_at(deployment: Deployment) -> datetime | None:
    """When devices could first be told to install: at creation, or at the scheduled start."""
    if deployment.start_at is None:
        return deployment.created_at
    return max(deployment.start_at, deployment.created_at) if deployment.start_at <= clock.now() else None


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
        .where(has_no_row(member)),
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

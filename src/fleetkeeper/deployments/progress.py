"""Progress counters: deployment_counts holds, per deployment, phase and status, how many devices
are there.

Every change of a device's status moves one count in the same transaction; set-based changes (the
fan-out, abort, a live target's joiners and leavers) move whole counts. Writers of one deployment's
counts hold its row lock (report, abort, the already-installed check) or created it (the fan-out),
so that two of them never race on one count."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.deployments.chunks import members
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.device_rows import chunk_only_status, has_no_row
from fleetkeeper.deployments.models import (
    FINAL_STATUSES,
    Deployment,
    DeploymentChunk,
    DeploymentCount,
    DeploymentDevice,
)
from fleetkeeper.deployments.statements import upsert

# Devices per phase and status.
Counts = dict[int, dict[str, int]]


async def add_to_counts(
    session: AsyncSession, deployment_id: str, phase: int, status: str, delta: int
) -> None:
    """Adds `delta` (negative: removes) devices to one count. For code that adds or removes rows
    of deployment_devices after the fan-out."""
    if delta == 0:
        return
    insert_ = upsert(session)(DeploymentCount).values(
        deployment_id=deployment_id, phase=phase, status=status, count=delta
    )
    await session.execute(
        insert_.on_conflict_do_update(
            index_elements=["deployment_id", "phase", "status"],
            set_={"count": DeploymentCount.count + insert_.excluded.count},
        )
    )


async def move_count(session: AsyncSession, deployment_id: str, phase: int, old: str, new: str) -> None:
    """One device of `phase` moved from status `old` to `new`."""
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


async def initialise_counts(session: AsyncSession, deployment_id: str, counts: Counts) -> None:
    """The counters of a new deployment, from what its fan-out wrote per phase and status."""
    rows = [
        {"deployment_id": deployment_id, "phase": phase, "status": status, "count": count}
        for phase, by_status in counts.items()
        for status, count in by_status.items()
        if count
    ]
    if rows:
        await session.execute(insert(DeploymentCount), rows)


async def abort_counts(session: AsyncSession, deployment_id: str) -> None:
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


async def counts_of(session: AsyncSession, deployment_id: str) -> Counts:
    """Devices per phase and status, from the counters (statuses with no device left out)."""
    rows = await session.execute(
        select(DeploymentCount.phase, DeploymentCount.status, DeploymentCount.count).where(
            DeploymentCount.deployment_id == deployment_id, DeploymentCount.count != 0
        )
    )
    counts: Counts = {}
    for phase, status, count in rows:
        counts.setdefault(phase, {})[status] = count
    return counts


async def counts_of_many(session: AsyncSession, deployment_ids: Sequence[str]) -> dict[str, Counts]:
    """counts_of for several deployments in one query (a list page)."""
    rows = await session.execute(
        select(
            DeploymentCount.deployment_id,
            DeploymentCount.phase,
            DeploymentCount.status,
            DeploymentCount.count,
        ).where(DeploymentCount.deployment_id.in_(deployment_ids), DeploymentCount.count != 0)
    )
    counts: dict[str, Counts] = {deployment_id: {} for deployment_id in deployment_ids}
    for deployment_id, phase, status, count in rows:
        counts[deployment_id].setdefault(phase, {})[status] = count
    return counts


def overall(counts: Counts) -> dict[str, int]:
    """Devices per status over every phase."""
    total: dict[str, int] = {}
    for by_status in counts.values():
        for status, count in by_status.items():
            total[status] = total.get(status, 0) + count
    return total


async def recount(session: AsyncSession, deployment_id: str) -> Counts:
    """Devices per phase and status counted over the deployment's rows: what the counters must say
    (for tests and repairs; at a million devices this is a full scan of the deployment)."""
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFoundError("no such deployment", code="deployment_not_found")
    rows = await session.execute(
        select(DeploymentDevice.phase, DeploymentDevice.status, func.count())
        .where(DeploymentDevice.deployment_number == deployment.number)
        .group_by(DeploymentDevice.phase, DeploymentDevice.status)
    )
    counts: Counts = {}
    for phase, status, count in rows:
        counts.setdefault(phase, {})[status] = count
    joined, device_id = members(session)
    chunk_only = await session.execute(
        select(DeploymentChunk.phase, func.count())
        .select_from(joined)
        .where(DeploymentChunk.deployment_number == deployment.number, has_no_row(device_id))
        .group_by(DeploymentChunk.phase)
    )
    status = chunk_only_status(deployment)
    for phase, count in chunk_only:
        by_status = counts.setdefault(phase, {})
        by_status[status] = by_status.get(status, 0) + count
    return counts


async def phase_counts(runtime: DeploymentsContext, deployment_id: str) -> Counts:
    """Devices per phase and status."""
    async with runtime.database.session() as session:
        return await counts_of(session, deployment_id)

"""Listings of deployments' devices and reports: a deployment's devices in keyset pages, the
deployments of one device, the newest reports, and one device's history in a deployment."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, literal, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.errors import NotFoundError, ProblemError
from fleetkeeper.core.paging import Page, decode_cursor, encode_cursor, invalid_cursor
from fleetkeeper.deployments.chunks import chunk_phase, members, phase_of
from fleetkeeper.deployments.device_rows import chunk_only_entry, chunk_only_status, has_no_row
from fleetkeeper.deployments.models import (
    DEVICE_STATUSES,
    PENDING,
    Deployment,
    DeploymentChunk,
    DeploymentDevice,
    DeploymentEvent,
    not_pending,
)
from fleetkeeper.deployments.progress import counts_of
from fleetkeeper.deployments.visibility import visible_deployment
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device

MAX_PAGE = 500


def _cursor_values(cursor: str, length: int) -> list[str]:
    """The sort key a cursor of these listings holds: `length` strings."""
    values = decode_cursor(cursor)
    if not isinstance(values, list) or len(values) != length or not all(isinstance(v, str) for v in values):
        raise invalid_cursor()
    return values


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ProblemError(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")


DevicesPage = Page[DeploymentDevice]


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
        after_status, after_id = _cursor_values(cursor, 2)
        if after_status not in DEVICE_STATUSES:
            raise invalid_cursor()
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
            query = query.where(not_pending(DeploymentDevice.status))
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
        if name == chunk_only_status(deployment):  # and the chunk-only devices
            found += await _chunk_only_devices(session, deployment, phase, resume_after, scope, wanted_rows)
            found = sorted(found, key=lambda entry: entry.device_id)[:wanted_rows]
        items += found
        if len(items) > limit:
            more = True
            items = items[:limit]
            break
    next_cursor = encode_cursor([items[-1].status, items[-1].device_id]) if more else None
    return DevicesPage(items=items, next_cursor=next_cursor)


async def _chunk_only_devices(
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
            has_no_row(device_id),
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
    return [chunk_only_entry(deployment, member, member_phase) for member, member_phase in rows]


DeviceDeploymentsPage = Page[tuple[Deployment, DeploymentDevice]]


async def deployments_of_device(
    session: AsyncSession, principal: Principal, device_id: str, *, limit: int = 50, cursor: str | None = None
) -> DeviceDeploymentsPage:
    """The deployments a device is part of, newest first, each with where the device stands.
    devices:read on the device (outside the caller's groups: 404, as for other device reads)."""
    _check_limit(limit)
    await devices.get_permitted_device(session, principal, device_id, Permission.DEVICES_READ)
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
        created, last_id = _cursor_values(cursor, 2)
        try:
            created_at = datetime.fromisoformat(created)
        except ValueError:
            raise invalid_cursor() from None
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
            entry if entry is not None else chunk_only_entry(deployment, device_id, chunk),
        )
        for deployment, entry, chunk in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1][0]
        next_cursor = encode_cursor([last.created_at.isoformat(), last.id])
    return DeviceDeploymentsPage(items=items, next_cursor=next_cursor)


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
    await devices.get_permitted_device(session, principal, device_id, Permission.DEVICES_READ)
    deployment = await visible_deployment(session, principal, deployment_id)
    entry = await session.get(DeploymentDevice, (deployment.number, device_id))
    if entry is None:
        chunk = await phase_of(session, deployment.number, device_id)
        if chunk is None:
            raise NotFoundError("this device is not part of that deployment", code="not_in_deployment")
        entry = chunk_only_entry(deployment, device_id, chunk)
    events = (
        await session.scalars(
            select(DeploymentEvent)
            .where(DeploymentEvent.deployment_id == deployment_id, DeploymentEvent.device_id == device_id)
            .order_by(DeploymentEvent.seq)
        )
    ).all()
    return entry, events

"""Which deployments a reader sees, and how much of each (docs/deployments.md, "Who sees what").

With devices:read unscoped, everything, read as before. Scoped to device groups, a reader sees a
deployment that reaches their groups — it targets a group of theirs, or holds a device they read —
and of it only what is theirs: the target's devices they read, the target group's name if they
see that group, their devices in the lists. The counters count every device of a deployment, so
its numbers go only to a reader of its whole target: a reader of part of it would learn how many
devices lie outside their groups and how those fare. Any other deployment is not found, as an
unknown id is, on every route and page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.deployments.chunks import chunk_phase, members
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.models import (
    UNDER_WAY_STATUSES,
    Deployment,
    DeploymentChunk,
    DeploymentCount,
    DeploymentDevice,
)
from fleetkeeper.deployments.progress import counts_of_many
from fleetkeeper.deployments.statistics import Statistics, statistics
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device


@dataclass(frozen=True)
class ReaderScope:
    """A scoped devices:read, as deployments use it."""

    devices: ColumnElement[bool]  # the devices the reader reads, a condition on Device
    groups: frozenset[str]  # the groups they see: those their devices:read names
    whole_groups: frozenset[str]  # of those, the ones that reach devices as a scope


async def reader_scope(session: AsyncSession, principal: Principal) -> ReaderScope | None:
    """None: devices:read unscoped, nothing to narrow."""
    groups = principal.grants.scopes(Permission.DEVICES_READ)
    if groups is None:
        return None
    return ReaderScope(
        devices=await devices.scope_condition(session, principal, Permission.DEVICES_READ),
        groups=groups,
        whole_groups=frozenset(await devices.groups_usable_as_scope(session, groups)),
    )


# A deployment of at most this many devices is searched from its own devices; a larger one from
# the reader's. Counting the reader's devices to choose instead cost more than most searches.
SEARCHED_FROM_ITS_DEVICES_UP_TO = 10_000


def reaches(scope: ReaderScope, session: AsyncSession) -> ColumnElement[bool]:
    """A condition on Deployment: it targets a group of the reader's, or holds a device they read.

    The search for such a device stops at the first one found, and starts from the deployment's
    devices when it has few (how many is in its counters), else from the reader's: never a pass
    over a million-device deployment for the reader of one plant, nor over a plant for a canary
    of ten. A deployment that reaches none of the reader's devices costs one probe per device of
    the smaller side, up to SEARCHED_FROM_ITS_DEVICES_UP_TO of its own."""
    size = (
        select(func.coalesce(func.sum(DeploymentCount.count), 0))
        .where(DeploymentCount.deployment_id == Deployment.id)
        .scalar_subquery()
    )
    holds_theirs = case(
        (size <= SEARCHED_FROM_ITS_DEVICES_UP_TO, _one_of_its_devices_is_theirs(scope, session)),
        else_=_one_of_theirs_is_in_it(scope),
    )
    if not scope.whole_groups:
        return holds_theirs
    target_group: ColumnElement[str] = Deployment.target["group"].as_string()
    return target_group.in_(sorted(scope.whole_groups)) | holds_theirs


def _theirs(scope: ReaderScope, device_id: SQLColumnExpression[str]) -> ColumnElement[bool]:
    return select(Device.id).where(Device.id == device_id, scope.devices).correlate_except(Device).exists()


def _one_of_its_devices_is_theirs(scope: ReaderScope, session: AsyncSession) -> ColumnElement[bool]:
    """From the deployment's side: its chunks' devices and its rows, each checked against the
    reader's groups."""
    joined, member = members(session)
    in_chunks = (
        select(member)
        .select_from(joined)
        .where(DeploymentChunk.deployment_number == Deployment.number, _theirs(scope, member))
        .exists()
    )
    in_rows = (
        select(DeploymentDevice.device_id)
        .where(
            DeploymentDevice.deployment_number == Deployment.number,
            _theirs(scope, DeploymentDevice.device_id),
        )
        .exists()
    )
    return in_chunks | in_rows


def _one_of_theirs_is_in_it(scope: ReaderScope) -> ColumnElement[bool]:
    """From the reader's side: each of their devices looked up in the deployment, a key probe of
    its row and two of its chunk (chunks.chunk_phase)."""
    has_row = (
        select(DeploymentDevice.device_id)
        .where(
            DeploymentDevice.deployment_number == Deployment.number,
            DeploymentDevice.device_id == Device.id,
        )
        .correlate_except(DeploymentDevice)
        .exists()
    )
    in_chunk = chunk_phase(Deployment.number, Device.id).is_not(None)
    return select(Device.id).where(scope.devices, has_row | in_chunk).exists()


async def _sees(session: AsyncSession, scope: ReaderScope | None, deployment: Deployment) -> bool:
    if scope is None:
        return True
    found = await session.scalar(
        select(Deployment.id).where(Deployment.id == deployment.id, reaches(scope, session))
    )
    return found is not None


def _not_found() -> NotFoundError:
    return NotFoundError("no such deployment", code="deployment_not_found")


async def _visible(
    session: AsyncSession, scope: ReaderScope | None, deployment_id: str, *, lock: bool = False
) -> Deployment:
    deployment = await session.get(Deployment, deployment_id, with_for_update=lock)
    if deployment is None or not await _sees(session, scope, deployment):
        raise _not_found()
    return deployment


async def visible_deployment(
    session: AsyncSession, principal: Principal, deployment_id: str, *, lock: bool = False
) -> Deployment:
    """The deployment, if the reader sees it (`lock`: its row locked, as writers take it)."""
    return await _visible(session, await reader_scope(session, principal), deployment_id, lock=lock)


@dataclass(frozen=True)
class DeploymentView:
    """A deployment as one reader sees it. Its numbers are None when part of its target is not
    theirs to see."""

    deployment: Deployment
    target: dict[str, Any]
    counts: dict[int, dict[str, int]] | None
    statistics: Statistics | None


async def _shown_target(
    session: AsyncSession, scope: ReaderScope | None, deployment: Deployment
) -> tuple[dict[str, Any], bool]:
    """The target as the reader may see it, and whether they read all of it."""
    target = deployment.target
    if scope is None:
        return target, True
    if "devices" in target:
        listed: list[str] = list(target["devices"])
        readable = set(await session.scalars(select(Device.id).where(Device.id.in_(listed), scope.devices)))
        return {"devices": [device for device in listed if device in readable]}, len(readable) == len(listed)
    # A group target counts as whole when the group is theirs; devices that left it since the
    # deployment was made stay in its numbers (they were in the reader's group when targeted).
    group = target.get("group")
    return {**target, "group": group if group in scope.groups else None}, group in scope.whole_groups


async def _views(
    session: AsyncSession, scope: ReaderScope | None, rows: Sequence[Deployment]
) -> list[DeploymentView]:
    shown = [(row, *await _shown_target(session, scope, row)) for row in rows]
    counts = await counts_of_many(session, [row.id for row, _target, whole in shown if whole])
    return [
        DeploymentView(row, target, counts[row.id], statistics(row, counts[row.id]))
        if whole
        else DeploymentView(row, target, None, None)
        for row, target, whole in shown
    ]


async def view(session: AsyncSession, principal: Principal, deployment_id: str) -> DeploymentView:
    """One deployment as the reader sees it; not found when they do not see it."""
    scope = await reader_scope(session, principal)
    return (await _views(session, scope, [await _visible(session, scope, deployment_id)]))[0]


async def view_after_change(
    runtime: DeploymentsContext, principal: Principal, deployment: Deployment
) -> DeploymentView:
    """What the operator who just created or changed a deployment is answered with."""
    async with runtime.database.session() as session:
        return (await _views(session, await reader_scope(session, principal), [deployment]))[0]


async def newest(
    session: AsyncSession, principal: Principal, *, statuses: Sequence[str] = (), limit: int = 200
) -> list[DeploymentView]:
    """The newest deployments the reader sees (of these statuses), as they see them."""
    scope = await reader_scope(session, principal)
    query = select(Deployment)
    if statuses:
        query = query.where(Deployment.status.in_(statuses))
    if scope is not None:
        query = query.where(reaches(scope, session))
    rows = (await session.scalars(query.order_by(Deployment.created_at.desc()).limit(limit))).all()
    return await _views(session, scope, rows)


async def under_way(session: AsyncSession, principal: Principal, *, limit: int = 20) -> list[DeploymentView]:
    """The newest active or paused deployments the reader sees: the dashboard's."""
    return await newest(session, principal, statuses=UNDER_WAY_STATUSES, limit=limit)

"""Live targets: a deployment to a group with `"live": true` keeps following the group.

Devices that join the group later (a dynamic group's filter now matches them, or a static group
got them as members) get a row in the deployment's current phase; devices that left it before
starting their install leave the deployment. `sync_live_deployments` does this for every live
deployment every 15 seconds (once across replicas); `sync_live_deployment` does it for one.

A live deployment does not finish by itself: when every device so far is done it stays active,
"waiting for devices". An operator ends it with `finish` (`POST /api/v1/deployments/{id}/finish`):
it stops following the group and finishes once the devices it has are done.

Devices joining later are never checked against the creator's scope, so creating (or finishing) a
live deployment needs devices:deploy unscoped or scoped to the target group itself.
See docs/deployments.md ("Live targets").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Integer, Select, delete, exists, func, insert, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.errors import ConflictError, ForbiddenError, NotFoundError
from fleetkeeper.core.logging import get_logger
from fleetkeeper.deployments import lifecycle, progress, targeting
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.models import FINAL_STATUSES, PENDING, Deployment, DeploymentDevice
from fleetkeeper.deployments.visibility import visible_deployment
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device, DeviceGroup
from fleetkeeper.releases.models import Release

# Deployments that still take devices in: a paused or scheduled one keeps its membership current
# so that resuming or starting it reaches the group as it is then.
FOLLOWING_STATUSES = ("active", "paused", "scheduled")

log = get_logger(__name__)
# The incompatible-device count last logged per deployment by this process: the same standing
# count is not logged again every 15 seconds.
_logged_incompatible: dict[str, int] = {}


def is_live(deployment: Deployment) -> bool:
    return bool(deployment.target.get("live")) and "group" in deployment.target


def waiting_for_devices(deployment: Deployment, progress: Mapping[int, Mapping[str, int]]) -> bool:
    """Whether a live deployment has nothing left to do until devices join its group: active, and
    every device it has (possibly none) is done."""
    return (
        is_live(deployment)
        and deployment.status == "active"
        and all(status in FINAL_STATUSES for counts in progress.values() for status in counts)
    )


def ensure_may_deploy_live(principal: Principal, group: str, *, named: bool = True) -> None:
    """devices:deploy unscoped, or scoped to `group` itself: then every future member is in scope
    by definition. A scope on other groups is not enough, even if it covers today's members.
    `named`: the refusal may name the group (the caller named it, or sees it); else it says "its
    group", as for any group the caller does not see."""
    scopes = principal.grants.scopes(Permission.DEVICES_DEPLOY)
    if scopes is None or group in scopes:
        return
    which = f"group {group}" if named else "its group"
    raise ForbiddenError(
        f"a live target deploys to devices that join {which} later, without another check: "
        f"it needs devices:deploy on all devices or on {which} itself",
        permission=Permission.DEVICES_DEPLOY.value,
        groups=[group] if named else [],
    )


@dataclass(frozen=True)
class LiveSync:
    """What one pass did to one deployment."""

    added: int = 0
    removed: int = 0
    incompatible: int = 0  # members of the group whose device type the release is not for
    followed: bool = True  # False: not live (any more), not following, or its group is gone


@dataclass(frozen=True)
class LiveSyncStats:
    deployments: int = 0
    added: int = 0
    removed: int = 0
    incompatible: int = 0


async def sync_live_deployments(runtime: DeploymentsContext) -> LiveSyncStats:
    """One pass over every live deployment that still takes devices in, one transaction each."""
    async with runtime.database.session() as session:
        rows = (
            await session.execute(
                select(Deployment.id, Deployment.target)
                .where(Deployment.status.in_(FOLLOWING_STATUSES))
                .order_by(Deployment.created_at, Deployment.id)
            )
        ).all()
    # The target is a small JSON object; read in Python, alike on both backends. There are few
    # open deployments at a time.
    live_ids = [deployment_id for deployment_id, target in rows if target.get("live") and "group" in target]
    added = removed = incompatible = 0
    for deployment_id in live_ids:
        result = await sync_live_deployment(runtime, deployment_id)
        added += result.added
        removed += result.removed
        incompatible += result.incompatible
    return LiveSyncStats(len(live_ids), added, removed, incompatible)


@dataclass(frozen=True)
class _Followed:
    deployment: Deployment
    group: str
    members: ColumnElement[bool]  # the group's accepted devices, now
    device_types: list[str]  # what the release is for


async def _followed(session: AsyncSession, deployment_id: str, *, lock: bool) -> _Followed | None:
    """The deployment and its group's members, or None when it does not follow a group now."""
    deployment = await session.get(Deployment, deployment_id, with_for_update=lock)
    if deployment is None:
        raise NotFoundError("no such deployment", code="deployment_not_found")
    if not is_live(deployment) or deployment.status not in FOLLOWING_STATUSES:
        return None
    name = str(deployment.target["group"])
    group = await session.scalar(select(DeviceGroup).where(DeviceGroup.name == name))
    if group is None:
        # Nothing is added or removed: without the group, who belongs is unknown.
        log.warning("live deployment's group is gone", deployment_id=deployment_id, group=name)
        return None
    release = await session.get(Release, deployment.release_id)
    assert release is not None  # a release is never deleted while a deployment uses it
    members = devices.group_condition(group) & (Device.status == "accepted")
    return _Followed(deployment, name, members, list(release.device_types))


def _new_members(deployment: Deployment, members: ColumnElement[bool]) -> ColumnElement[bool]:
    """Members of the group without a row in the deployment (a condition on devices)."""
    has_row = exists().where(
        DeploymentDevice.deployment_number == deployment.number, DeploymentDevice.device_id == Device.id
    )
    return members & ~has_row


def _leavers(deployment: Deployment, members: ColumnElement[bool]) -> Select[str]:
    """Rows of devices that are no longer members and never started: pending, nothing reported.
    Those that reported anything stay, with their history, until they are done."""
    candidate = aliased(DeploymentDevice)
    still_member = exists(select(Device.id).where(Device.id == candidate.device_id, members))
    return select(candidate.device_id).where(
        candidate.deployment_number == deployment.number,
        candidate.status == PENDING,
        candidate.last_seq == 0,
        ~still_member,
    )


async def sync_live_deployment(runtime: DeploymentsContext, deployment_id: str) -> LiveSync:
    """Brings one live deployment's devices in line with its group, set-based.

    First a look without locks: most passes find nothing to do, and they must not hold the
    deployment's row (every report on it waits for that lock) while they scan the group. When
    there is something to do, the deployment row is locked (as reports and operator actions do),
    so passes over one deployment take turns and each sees the previous one's rows; the devices
    leaving are locked with SKIP LOCKED, so a pass never waits on a device's report (which holds
    its row, then wants the deployment's) — such a device is looked at again next time.
    """
    async with runtime.database.session() as session:
        found = await _followed(session, deployment_id, lock=False)
        if found is None:
            return LiveSync(followed=False)
        joining = _new_members(found.deployment, found.members)
        something_to_do = await session.scalar(
            select(
                or_(
                    select(Device.id).where(joining, Device.device_type.in_(found.device_types)).exists(),
                    _leavers(found.deployment, found.members).exists(),
                )
            )
        )
        incompatible = int(
            await session.scalar(
                select(func.count())
                .select_from(Device)
                .where(joining, Device.device_type.not_in(found.device_types))
            )
            or 0
        )
    added = removed = 0
    if something_to_do:
        async with runtime.database.transaction() as session:
            found = await _followed(session, deployment_id, lock=True)
            if found is None:
                return LiveSync(followed=False)
            removed = await _remove_leavers(session, found.deployment, found.members)
            added = await _add_joiners(session, found)
            if added or removed:
                await record(
                    session,
                    actor=SYSTEM,
                    action="deployment.live_synced",
                    object_type="deployment",
                    object_id=deployment_id,
                    details={
                        "group": found.group,
                        "added": added,
                        "removed": removed,
                        "phase": found.deployment.current_phase + 1,
                        "incompatible_skipped": incompatible,
                    },
                )
    if added or removed:
        log.info(
            "live deployment followed its group",
            deployment_id=deployment_id,
            group=found.group,
            added=added,
            removed=removed,
            incompatible_skipped=incompatible,
        )
    if _logged_incompatible.get(deployment_id, 0) != incompatible:
        _logged_incompatible[deployment_id] = incompatible
        if incompatible:
            log.warning(
                "group members of another device type are not added to the live deployment",
                deployment_id=deployment_id,
                group=found.group,
                incompatible_skipped=incompatible,
                device_types=found.device_types,
            )
    return LiveSync(added=added, removed=removed, incompatible=incompatible)


async def _remove_leavers(session: AsyncSession, deployment: Deployment, members: ColumnElement[bool]) -> int:
    """One DELETE of the leavers that nobody else has locked now."""
    # A CTE, evaluated once: as an IN (subquery) the locking subquery may be rescanned for every
    # row of the deployment (seen on PostgreSQL: minutes for a few hundred rows).
    leaving = _leavers(deployment, members).with_for_update(skip_locked=True).cte("leaving")
    phases = (
        await session.scalars(
            delete(DeploymentDevice)
            .where(
                DeploymentDevice.deployment_number == deployment.number,
                DeploymentDevice.device_id.in_(select(leaving.c.device_id)),
            )
            .returning(DeploymentDevice.phase)
        )
    ).all()
    # Leavers are pending: their phases' pending counts go down (progress.py).
    for phase in set(phases):
        await progress.add_to_counts(session, deployment.id, phase, PENDING, -phases.count(phase))
    return len(phases)


async def _add_joiners(session: AsyncSession, found: _Followed) -> int:
    """New members of a device type the release is for get a row in the current phase: one
    INSERT … SELECT … WHERE NOT EXISTS."""
    deployment = found.deployment
    result = await session.execute(
        insert(DeploymentDevice).from_select(
            ["deployment_number", "device_id", "phase", "status", "attempts", "last_seq"],
            select(
                literal(deployment.number, Integer),
                Device.id,
                literal(deployment.current_phase, Integer),
                literal(PENDING),
                literal(0),
                literal(0),
            ).where(_new_members(deployment, found.members), Device.device_type.in_(found.device_types)),
        )
    )
    added = int(getattr(result, "rowcount", 0) or 0)
    await progress.add_to_counts(session, deployment.id, deployment.current_phase, PENDING, added)
    return added


async def finish(runtime: DeploymentsContext, principal: Principal, deployment_id: str) -> Deployment:
    """An operator ends a live deployment: it stops following its group, and finishes as any other
    deployment does when its last device is done — at once if every device already is."""
    async with runtime.database.transaction() as session:
        deployment = await visible_deployment(session, principal, deployment_id, lock=True)
        if not is_live(deployment):
            raise ConflictError(
                "only a live deployment is finished by an operator: this one finishes by itself "
                "when its last device is done (or abort it)",
                code="not_live",
            )
        group = str(deployment.target["group"])
        # Finishing deploys no further, but a live deployment's release is deployed to every device
        # that joined: the same release scope as resuming (targeting.release_of).
        await targeting.release_of(session, principal, deployment)
        ensure_may_deploy_live(principal, group, named=bool(devices.shown_group_names(principal, [group])))
        if deployment.status not in FOLLOWING_STATUSES:
            raise ConflictError(f"a {deployment.status} deployment cannot finish", code="invalid_transition")
        counts = await progress.counts_of(session, deployment_id)
        open_devices = sum(
            count
            for by_status in counts.values()
            for status, count in by_status.items()
            if status not in FINAL_STATUSES
        )
        # A new dict: the column is plain JSON, whose in-place changes SQLAlchemy does not see.
        deployment.target = {**deployment.target, "live": False}
        await record(
            session,
            actor=principal.actor,
            action="deployment.live_ended",
            object_type="deployment",
            object_id=deployment_id,
            details={"group": group, "devices_not_done": int(open_devices or 0)},
        )
        await session.flush()
        await lifecycle.advance(session, deployment)
    _logged_incompatible.pop(deployment_id, None)
    return deployment

"""What a deployment may deploy, and to which devices: the release and the target as the caller
may read them, then devices:deploy on every device targeted (docs/deployments.md, "Who may").

Scope comes first. A release outside the caller's release tags, a device they cannot read, a
group they do not see that reaches beyond their devices:deploy (or reaches nothing): each answers
as an unknown one does, before anything about the target is told — its size, its device types, the
groups of its devices. Only a device the caller reads is ever named in a refusal."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.errors import ForbiddenError, NotFoundError
from fleetkeeper.deployments.models import Deployment
from fleetkeeper.deployments.plans import Target
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device, DeviceGroup
from fleetkeeper.releases import service as releases
from fleetkeeper.releases.models import Release


async def release(session: AsyncSession, principal: Principal, name: str, version: str) -> Release:
    """The release as the catalogue shows it to the caller: the same 404 as reading it. Held until
    the deployment is written: a deletion of the release waits for it, then is refused."""
    return await releases.get_release(
        session, principal, name, version, Permission.RELEASES_READ, lock="key_share"
    )


async def release_of(session: AsyncSession, principal: Principal, deployment: Deployment) -> Release:
    """The deployment's release, if the caller's releases:read reaches its tags: resuming, advancing
    or finishing a deployment carries its release further, which needs what creating it needed (the
    same 404 as reading the release). Pausing and aborting only stop it: no release check."""
    found = await session.get(Release, deployment.release_id)
    if found is None:
        raise NotFoundError("no such release", code="release_not_found")
    return await release(session, principal, found.name, found.version)


async def target_devices(session: AsyncSession, principal: Principal, target: Target) -> ColumnElement[bool]:
    """The accepted devices the target names (a condition on Device), once the caller may name
    them and deploy to every one."""
    group_unseen = None
    if target.devices is not None:
        readable = await devices.scope_condition(session, principal, Permission.DEVICES_READ)
        named = await session.scalar(
            select(func.count()).select_from(Device).where(Device.id.in_(target.devices), readable)
        )
        if named != len(target.devices):
            raise NotFoundError("the target names devices that do not exist", code="device_not_found")
        condition: ColumnElement[bool] = Device.id.in_(target.devices)
    else:
        assert target.group is not None
        group = await devices.get_group(session, target.group)
        if target.live and principal.grants.scopes(Permission.DEVICES_DEPLOY) is not None:
            _ensure_scope_vouches_for_joiners(group)
        condition = devices.group_condition(group)
        if not devices.shown_group_names(principal, [group.name]):
            group_unseen = group.name
    condition = condition & (Device.status == "accepted")
    await ensure_may_deploy_to_all(session, principal, condition, group_unseen=group_unseen)
    if group_unseen is not None and await session.scalar(select(Device.id).where(condition).limit(1)) is None:
        raise devices.group_not_found(group_unseen)
    return condition


def _ensure_scope_vouches_for_joiners(group: DeviceGroup) -> None:
    """A scoped deployer's live target is their group itself (live.ensure_may_deploy_live); a group
    whose filter reads what devices report reaches no device as a scope, so it vouches for none
    of the devices that join later."""
    if devices.usable_as_scope(group):
        return
    raise ForbiddenError(
        f"group {group.name} follows what devices report about themselves, so a scope on it reaches "
        "no device: a live target on it needs devices:deploy on all devices",
        permission=Permission.DEVICES_DEPLOY.value,
        groups=[group.name],
    )


async def ensure_may_deploy_to_all(
    session: AsyncSession,
    principal: Principal,
    target: ColumnElement[bool],
    *,
    group_unseen: str | None = None,
) -> None:
    """devices:deploy for every device targeted: one outside the caller's scope refuses the whole
    request, naming it and its groups when the caller reads it. A group the caller does not see
    is a target only when all of it is theirs to deploy to; otherwise it is not found."""
    if principal.grants.scopes(Permission.DEVICES_DEPLOY) is None:
        return
    allowed = await devices.scope_condition(session, principal, Permission.DEVICES_DEPLOY)
    outside = await session.scalar(select(Device.id).where(target, ~allowed).order_by(Device.id).limit(1))
    if outside is None:
        return
    if group_unseen is not None:
        raise devices.group_not_found(group_unseen)
    readable = await devices.scope_condition(session, principal, Permission.DEVICES_READ)
    if await session.scalar(select(Device.id).where(Device.id == outside, readable)) is None:
        raise ForbiddenError(
            "the target includes devices outside your groups: devices:deploy is needed on all of them",
            permission=Permission.DEVICES_DEPLOY.value,
            groups=[],
        )
    groups = devices.shown_group_names(principal, await devices.device_group_names(session, outside))
    raise ForbiddenError(
        f"the target includes devices outside your scope, such as {outside} "
        f"(in {', '.join(groups) if groups else 'no group'}): devices:deploy is needed on all of them",
        permission=Permission.DEVICES_DEPLOY.value,
        groups=groups,
    )

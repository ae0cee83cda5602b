"""Device groups as permission scopes: which groups may define one, which devices a scoped
permission reaches, which groups a caller sees, and who may move a device between groups.

A device chooses what it reports — its inventory, and when it is seen. A dynamic group whose
filter reads any of that would let a device move itself into a scope (or out of one), so such a
group reaches no device as a scope; it still serves as a deployment target and a search. Fit for a
scope are the fields that the server or an operator sets, and the identity fixed when the device
was accepted. See docs/access.md, "Scopes"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

from sqlalchemy import ColumnElement, exists, false, literal, or_, select, true, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.errors import ForbiddenError
from fleetkeeper.devices.filters import compile_filter, parse, referenced_fields
from fleetkeeper.devices.models import Device, DeviceGroup, GroupMember

# Set by the server (id, status, created_at) or an operator (static `group` membership, `tag.*`),
# or fixed when the device was accepted (its identity): nothing the device can change afterwards.
# Everything else — inventory paths, `last_seen` — the device decides.
FIELDS_FIT_FOR_SCOPES = frozenset({"id", "status", "created_at", "device_type", "serial", "mac", "group"})
PREFIXES_FIT_FOR_SCOPES = ("tag.", "identity.")


def device_reported_fields(group: DeviceGroup) -> list[str]:
    """The fields of a dynamic group's filter that the device decides (none: fit for a scope)."""
    if group.kind != "dynamic" or not group.filter:
        return []
    fields = referenced_fields(parse(group.filter))
    return sorted(
        field
        for field in fields
        if field not in FIELDS_FIT_FOR_SCOPES and not field.startswith(PREFIXES_FIT_FOR_SCOPES)
    )


def usable_as_scope(group: DeviceGroup) -> bool:
    return not device_reported_fields(group)


async def groups_usable_as_scope(session: AsyncSession, names: Iterable[str]) -> set[str]:
    """Of these group names, those of existing groups that reach devices as a scope."""
    groups = (await session.scalars(select(DeviceGroup).where(DeviceGroup.name.in_(sorted(names))))).all()
    return {group.name for group in groups if usable_as_scope(group)}


async def device_group_names(session: AsyncSession, device_id: str, *, as_scope: bool = False) -> set[str]:
    """The static groups the device is in, and the dynamic groups whose filter it matches now;
    `as_scope`: only the groups through which a scope reaches it. (A member row in a dynamic group,
    which enrollment once wrote for a token's or a pre-authorization's group, counts for nothing.)"""
    static = await session.scalars(
        select(DeviceGroup.name)
        .join(GroupMember, GroupMember.group_id == DeviceGroup.id)
        .where(GroupMember.device_id == device_id, DeviceGroup.kind == "static")
    )
    names = set(static)
    dynamic = (await session.scalars(select(DeviceGroup).where(DeviceGroup.kind == "dynamic"))).all()
    probes = [
        select(literal(group.name).label("name")).where(Device.id == device_id, compile_filter(group.filter))
        for group in dynamic
        if group.filter and (not as_scope or usable_as_scope(group))
    ]
    if probes:
        names.update((await session.scalars(select(union_all(*probes).subquery().c.name))).all())
    return names


async def scope_condition(
    session: AsyncSession, principal: Principal, permission: Permission
) -> ColumnElement[bool]:
    """SQL that keeps the devices a permission reaches: in a static group it names, or matching a
    dynamic group it names that is fit for a scope. Unscoped: everything; not held: nothing."""
    scopes = principal.grants.scopes(permission)
    if scopes is None:
        return true()
    if not scopes:
        return false()
    groups = (await session.scalars(select(DeviceGroup).where(DeviceGroup.name.in_(sorted(scopes))))).all()
    static_ids = [group.id for group in groups if group.kind == "static"]
    conditions: list[ColumnElement[bool]] = []
    if static_ids:
        conditions.append(
            exists().where(GroupMember.device_id == Device.id, GroupMember.group_id.in_(static_ids))
        )
    conditions += [
        compile_filter(group.filter)
        for group in groups
        if group.kind == "dynamic" and group.filter and usable_as_scope(group)
    ]
    return or_(*conditions) if conditions else false()


def shown_group_names(principal: Principal, names: Iterable[str]) -> list[str]:
    """Of these groups, those the caller sees: every group with devices:read unscoped, else the
    groups their devices:read names. Others are not named to them, lest names leak."""
    visible = principal.grants.scopes(Permission.DEVICES_READ)
    return sorted(name for name in names if visible is None or name in visible)


def groups_seen_by(principal: Principal, groups: Sequence[DeviceGroup]) -> list[DeviceGroup]:
    """Of these groups, those the caller sees (as shown_group_names)."""
    shown = set(shown_group_names(principal, [group.name for group in groups]))
    return [group for group in groups if group.name in shown]


def groups_not_managed(principal: Principal, names: Iterable[str]) -> list[str]:
    """Of these groups, those where the principal lacks devices:manage: the groups a device may not
    be moved into or out of by them."""
    return sorted(name for name in names if not principal.can(Permission.DEVICES_MANAGE, [name]))


def ensure_may_move(principal: Principal, before: set[str], after: set[str]) -> None:
    """A change that moves a device into or out of groups (a tag a dynamic group reads) needs
    devices:manage in each of them, as adding it to a static group does: else an operator of one
    group could hand the device to the people of another, or take it from them."""
    outside = groups_not_managed(principal, before ^ after)
    if not outside:
        return
    named = shown_group_names(principal, outside)
    unnamed = len(outside) - len(named)
    where = ", ".join(named + ([f"{unnamed} group(s) outside your scope"] if unnamed else []))
    raise ForbiddenError(
        f"this change moves the device into or out of groups where you lack devices:manage: {where}",
        permission=Permission.DEVICES_MANAGE.value,
        groups=named,
    )


@asynccontextmanager
async def checking_moves(session: AsyncSession, principal: Principal, device_id: str) -> AsyncIterator[None]:
    """Around a change to a device in this transaction (its tags, its status): refuses it with
    `ensure_may_move` when it moves the device into or out of groups, read before and after.
    Nothing to read for a caller with devices:manage everywhere."""
    if principal.grants.scopes(Permission.DEVICES_MANAGE) is None:
        yield
        return
    before = await device_group_names(session, device_id)
    yield
    await session.flush()
    ensure_may_move(principal, before, await device_group_names(session, device_id))

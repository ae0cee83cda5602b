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
from dataclasses import dataclass, field

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


def refusal(principal: Principal, outside: Sequence[str], change: str) -> ForbiddenError:
    """403 for a change (`change`: what it does, e.g. "this change moves the device into or out of
    groups") that needs devices:manage in groups `outside`. It names only the groups the caller
    sees, and says the same for one unseen group as for any number of them: else an operator could
    count, by the values they try, which groups read what."""
    named = shown_group_names(principal, outside)
    where = ", ".join(named + (["groups outside your scope"] if len(named) < len(outside) else []))
    return ForbiddenError(
        f"{change} where you lack devices:manage: {where}",
        permission=Permission.DEVICES_MANAGE.value,
        groups=named,
    )


@dataclass
class Moves:
    """What a change did to a device's groups: those it moved the device into or out of where the
    principal lacks devices:manage. Filled in when the change is done."""

    outside: list[str] = field(default_factory=list)


@asynccontextmanager
async def watching_moves(session: AsyncSession, principal: Principal, device_id: str) -> AsyncIterator[Moves]:
    """Around a change to a device in this transaction: reads its groups before and after, and
    notes those it entered or left where the principal lacks devices:manage. Nothing to read for a
    principal with devices:manage everywhere."""
    moves = Moves()
    if principal.grants.scopes(Permission.DEVICES_MANAGE) is None:
        yield moves
        return
    before = await device_group_names(session, device_id)
    yield moves
    await session.flush()
    moves.outside = groups_not_managed(principal, before ^ await device_group_names(session, device_id))


@asynccontextmanager
async def checking_moves(session: AsyncSession, principal: Principal, device_id: str) -> AsyncIterator[None]:
    """Around a change to a device in this transaction (its tags, its status, a static group's
    members): refuses it when it moves the device into or out of groups where the principal lacks
    devices:manage, as adding it to a static group of theirs does: else an operator of one group
    could hand the device to the people of another (a dynamic group that reads the tag, the status,
    or `group`), or take it from them."""
    async with watching_moves(session, principal, device_id) as moves:
        yield
    if moves.outside:
        raise refusal(principal, moves.outside, "this change moves the device into or out of groups")


async def unmanaged_once_accepted(
    session: AsyncSession, principal: Principal, device: Device
) -> list[str] | None:
    """Where the principal lacks devices:manage among the groups through which a scope reaches the
    device once accepted (its claimed identity, its groups, as they stand in this transaction):
    None when they may accept it. Needs devices:manage in each (everywhere, for a device in no
    group: []). The one rule for accepting a device: by hand, by pre-authorization, and by an
    auto-accepting token for its creator (auto_accept.py)."""
    if principal.grants.scopes(Permission.DEVICES_MANAGE) is None:
        return None
    status, device.status = device.status, "accepted"
    try:
        await session.flush()
        groups = await device_group_names(session, device.id, as_scope=True)
    finally:
        device.status = status
    if not groups:
        return []
    return groups_not_managed(principal, groups) or None


@asynccontextmanager
async def checking_acceptance(
    session: AsyncSession, principal: Principal, device: Device
) -> AsyncIterator[None]:
    """Around accepting a device (deciding on a pending one, pre-authorizing one, with the groups
    it goes into) in this transaction: refuses it when it moves the device across groups where the
    principal lacks devices:manage (checking_moves), or when the principal lacks devices:manage in
    a group that reaches the accepted device as a scope (unmanaged_once_accepted)."""
    async with checking_moves(session, principal, device.id):
        yield
    outside = await unmanaged_once_accepted(session, principal, device)
    if outside == []:
        raise ForbiddenError(
            "the accepted device would be in no group, which needs devices:manage on all devices",
            permission=Permission.DEVICES_MANAGE.value,
            groups=[],
        )
    if outside:
        raise refusal(principal, outside, "once accepted, the device is in groups")

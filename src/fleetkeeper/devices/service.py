"""The devices domain as other domains and the routes see it: finding devices, their groups
(which RBAC scopes name), listing and searching with the filter language, tags, inventory, groups."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.audit.service import Actor, record
from fleetkeeper.core.db import Database, UTCDateTime, utcnow
from fleetkeeper.core.errors import ConflictError, ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.lookups import creating, get_or_404, one_or_404
from fleetkeeper.core.paging import Page, decode_cursor, encode_cursor, invalid_cursor
from fleetkeeper.devices.filters import compile_filter
from fleetkeeper.devices.inventory import (
    check_inventory,
    check_tags,
    flatten,
    inventory_hash,
    replace_attributes,
)
from fleetkeeper.devices.models import Device, DeviceCertificate, DeviceGroup, GroupMember
from fleetkeeper.devices.scope_fitness import refuse_unfit_group_given_as_scope
from fleetkeeper.devices.scopes import checking_moves, groups_seen_by
from fleetkeeper.devices.scopes import device_group_names as device_group_names
from fleetkeeper.devices.scopes import groups_usable_as_scope as groups_usable_as_scope
from fleetkeeper.devices.scopes import scope_condition as scope_condition
from fleetkeeper.devices.scopes import shown_group_names as shown_group_names
from fleetkeeper.devices.scopes import usable_as_scope as usable_as_scope

# No "/": a group name is a path segment of the API.
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
MAX_PAGE = 500
LAST_SEEN_RESOLUTION = timedelta(seconds=60)
# A device is online when it was seen (a check-in, an inventory report, any mTLS request) within
# this time: three of the agent's default 5-minute check-in intervals, so that one missed or
# jittered check-in does not mark it offline.
ONLINE_WITHIN = timedelta(minutes=15)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_SORTS = ("created_at", "last_seen")
SortKey = Literal["created_at", "last_seen", "id", "device_type", "status"]
_SORT_COLUMNS = {
    "created_at": Device.created_at,
    "last_seen": Device.last_seen_at,
    "id": Device.id,
    "device_type": Device.device_type,
    "status": Device.status,
}


def _not_found() -> NotFoundError:
    return NotFoundError("no such device", code="device_not_found")


# --- groups and scopes --------------------------------------------------------------------------


async def ensure_device_permission(
    session: AsyncSession, principal: Principal, permission: Permission, device: Device
) -> None:
    """403 unless the permission holds in one of the device's groups (or everywhere). A device the
    caller may not even read is reported as not found, so that ids cannot be probed."""
    if principal.grants.scopes(permission) is None:
        return
    groups = await device_group_names(session, device.id, as_scope=True)
    if principal.can(permission, groups):
        return
    if not principal.can(Permission.DEVICES_READ, groups):
        raise _not_found()
    shown = shown_group_names(principal, groups)
    raise ForbiddenError(
        f"this needs {permission.value} in one of the device's groups: {', '.join(shown) or 'none of yours'}",
        permission=permission.value,
    )


async def get_device_unchecked(session: AsyncSession, device_id: str) -> Device:
    """The device, whoever asks: for callers that checked the permission already."""
    return await get_or_404(session, Device, device_id, _not_found())


async def get_permitted_device(
    session: AsyncSession, principal: Principal, device_id: str, permission: Permission
) -> Device:
    """The device, when the principal holds `permission` on it (ensure_device_permission)."""
    device = await get_device_unchecked(session, device_id)
    await ensure_device_permission(session, principal, permission, device)
    return device


async def get_manageable_device(database: Database, principal: Principal, device_id: str) -> Device:
    """get_permitted_device for devices:manage, in a session of its own: what a route acting on one
    device checks first."""
    async with database.session() as session:
        return await get_permitted_device(session, principal, device_id, Permission.DEVICES_MANAGE)


async def certificates_of(session: AsyncSession, device_id: str) -> Sequence[DeviceCertificate]:
    """Every certificate issued to the device, newest first (revoked ones too)."""
    return (
        await session.scalars(
            select(DeviceCertificate)
            .where(DeviceCertificate.device_id == device_id)
            .order_by(DeviceCertificate.issued_at.desc())
        )
    ).all()


# --- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePage(Page[Device]):
    total: int | None = None
    # The page before this one (pass it with backward=True); None on the first page.
    previous_cursor: str | None = None


def _cursor_of(device: Device, sort: SortKey) -> str:
    raw = getattr(device, _SORT_COLUMNS[sort].key)
    return encode_cursor([raw.isoformat() if isinstance(raw, datetime) else raw, device.id])


def _decode_cursor(cursor: str) -> list[Any]:
    values = decode_cursor(cursor)
    if not isinstance(values, list) or len(values) != 2 or not isinstance(values[1], str):
        raise invalid_cursor()
    return values


async def list_devices(
    session: AsyncSession,
    principal: Principal,
    *,
    filter_expression: str | None = None,
    sort: SortKey = "created_at",
    descending: bool = False,
    limit: int = 100,
    cursor: str | None = None,
    backward: bool = False,
    extra: ColumnElement[bool] | None = None,
) -> DevicePage:
    """The devices the caller may read, matching the filter, in keyset pages (stable under inserts).
    `backward`: the page before `cursor` (a page's previous_cursor), still in the asked order."""
    if not 1 <= limit <= MAX_PAGE:
        raise ProblemError(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")
    column = _SORT_COLUMNS[sort]
    conditions = [await scope_condition(session, principal, Permission.DEVICES_READ)]
    if filter_expression:
        conditions.append(compile_filter(filter_expression))
    if extra is not None:
        conditions.append(extra)
    # NULLs (never seen) sort as the empty string / epoch so that the keyset stays total.
    key = func.coalesce(column, _null_substitute(sort))
    # A backward page is read in the opposite order from its cursor, then turned round.
    scan_descending = descending != backward
    if cursor is not None:
        value, last_id = _decode_cursor(cursor)
        value = _cursor_value(sort, value)
        after = or_(key > value, and_(key == value, Device.id > last_id))
        before = or_(key < value, and_(key == value, Device.id < last_id))
        conditions.append(before if scan_descending else after)
    order = (key.desc(), Device.id.desc()) if scan_descending else (key.asc(), Device.id.asc())
    rows = (await session.scalars(select(Device).where(*conditions).order_by(*order).limit(limit + 1))).all()
    more = len(rows) > limit
    items = list(rows[:limit])
    if backward:
        items.reverse()
    # The cursor a page was reached by says that there are devices on its other side.
    has_next = more if not backward else cursor is not None
    has_previous = more if backward else cursor is not None
    return DevicePage(
        items,
        next_cursor=_cursor_of(items[-1], sort) if items and has_next else None,
        previous_cursor=_cursor_of(items[0], sort) if items and has_previous else None,
    )


def _null_substitute(sort: str) -> Any:
    if sort in _TIME_SORTS:
        return literal(EPOCH, type_=UTCDateTime())
    return literal("")


def _cursor_value(sort: str, value: Any) -> Any:
    if sort in _TIME_SORTS:
        if value is None:
            return EPOCH
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise invalid_cursor() from None
        if parsed.tzinfo is None:
            raise invalid_cursor()
        return parsed
    return "" if value is None else str(value)


@dataclass(frozen=True)
class StatusCounts:
    """Devices the caller may read, by enrollment status, and the accepted ones seen lately."""

    by_status: dict[str, int]
    online: int

    @property
    def accepted(self) -> int:
        return self.by_status.get("accepted", 0)

    @property
    def pending(self) -> int:
        return self.by_status.get("pending", 0)


async def status_counts(session: AsyncSession, principal: Principal) -> StatusCounts:
    scope = await scope_condition(session, principal, Permission.DEVICES_READ)
    rows = (
        await session.execute(select(Device.status, func.count()).where(scope).group_by(Device.status))
    ).all()
    online = await session.scalar(
        select(func.count()).where(
            scope, Device.status == "accepted", Device.last_seen_at >= utcnow() - ONLINE_WITHIN
        )
    )
    return StatusCounts({status: count for status, count in rows}, online or 0)


def is_online(device: Device) -> bool:
    return device.last_seen_at is not None and utcnow() - device.last_seen_at < ONLINE_WITHIN


# --- inventory and tags -------------------------------------------------------------------------


async def report_inventory(database: Database, device_id: str, report: Any) -> bool:
    """Keeps the newest report; returns whether it changed (the time of change is kept too)."""
    report = check_inventory(report)
    digest = inventory_hash(report)
    now = utcnow()
    async with database.transaction() as session:
        device = await session.get(Device, device_id)
        if device is None:
            raise _not_found()
        device.last_seen_at = now
        if device.inventory_hash == digest:
            return False
        device.inventory = report
        device.inventory_hash = digest
        device.inventory_changed_at = now
        await replace_attributes(session, device_id, flatten(report), namespace=None)
    return True


async def touch(database: Database, device: Device) -> None:
    """Last seen, written at most once a minute per device."""
    await touch_seen(database, device.id, device.last_seen_at)


async def touch_seen(database: Database, device_id: str, last_seen_at: datetime | None) -> None:
    """`touch` for a route that read only the device's id and last-seen time."""
    now = utcnow()
    if last_seen_at is not None and now - last_seen_at < LAST_SEEN_RESOLUTION:
        return
    # A device checking in every 30 minutes writes at each check-in: one statement, one round trip.
    await database.write_one(_TOUCH, {"device_id": device_id, "now": now}, idempotent=True)


_TOUCH = update(Device).where(Device.id == bindparam("device_id")).values(last_seen_at=bindparam("now"))


async def set_tags(database: Database, principal: Principal, device_id: str, tags: Any) -> Device:
    """Replaces the operator's tags. A change that moves the device into or out of a dynamic group
    (one that reads the tag) needs devices:manage in that group too (scopes.checking_moves)."""
    tags = check_tags(tags)
    async with database.transaction() as session:
        device = await get_permitted_device(session, principal, device_id, Permission.DEVICES_MANAGE)
        async with checking_moves(session, principal, device.id):
            device.tags = tags
            await replace_attributes(
                session, device.id, {f"tag.{key}": value for key, value in tags.items()}, namespace="tag."
            )
        await record(
            session,
            actor=principal.actor,
            action="device.tags_changed",
            object_type="device",
            object_id=device.id,
            details={"tags": tags},
        )
    return device


# --- groups ------------------------------------------------------------------------------------


def _ensure_everywhere(principal: Principal, permission: Permission) -> None:
    """Groups define scopes: creating or deleting one needs the permission without a scope."""
    if principal.grants.scopes(permission) is not None:
        raise ForbiddenError(
            f"creating or deleting device groups needs {permission.value} on all devices",
            permission=permission.value,
        )


async def list_groups(session: AsyncSession) -> Sequence[DeviceGroup]:
    return (await session.scalars(select(DeviceGroup).order_by(DeviceGroup.name))).all()


async def visible_groups(session: AsyncSession, principal: Principal) -> list[DeviceGroup]:
    """The groups the caller sees: all with devices:read unscoped, else those it names."""
    return groups_seen_by(principal, await list_groups(session))


def group_not_found(name: str) -> NotFoundError:
    return NotFoundError(f"no device group named {name}", code="group_not_found")


async def get_group(session: AsyncSession, name: str) -> DeviceGroup:
    named = select(DeviceGroup).where(DeviceGroup.name == name)
    return await one_or_404(session, named, group_not_found(name))


async def visible_group(session: AsyncSession, principal: Principal, name: str) -> DeviceGroup:
    """A group the caller sees; any other answers as an unknown one."""
    group = await get_group(session, name)
    if not groups_seen_by(principal, [group]):
        raise group_not_found(name)
    return group


async def managed_static_group(session: AsyncSession, principal: Principal, name: str) -> DeviceGroup:
    """A static group whose members the caller may change. Scope comes first: a group they neither
    see nor manage answers as an unknown one (`visible_group`), one they see is 403 without
    devices:manage in it, and only then is a dynamic group refused (its filter decides its members;
    a member row would put a device in it whatever the filter says)."""
    if principal.can(Permission.DEVICES_MANAGE, [name]):
        group = await get_group(session, name)  # named by their own grants: nothing to hide
    else:
        group = await visible_group(session, principal, name)
        principal.ensure(Permission.DEVICES_MANAGE, [name], on=f"group {name}")
    if group.kind != "static":
        raise ConflictError("a dynamic group's members follow its filter", code="dynamic_group")
    return group


async def create_group(
    database: Database, principal: Principal, *, name: str, description: str, filter_expression: str | None
) -> DeviceGroup:
    """Static when there is no filter, dynamic otherwise. Creating a group defines a new scope, so
    it needs devices:manage everywhere; a filter unfit for a scope under a name that grants give
    as a scope is refused (scope_fitness)."""
    _ensure_everywhere(principal, Permission.DEVICES_MANAGE)
    if not GROUP_NAME.match(name):
        raise ProblemError(
            "a group name is 1-128 of A-Z a-z 0-9 . _ : -", code="invalid_group_name", status=422
        )
    if filter_expression is not None:
        compile_filter(filter_expression)
    exists = ConflictError(f"a group named {name} exists", code="group_exists")
    async with creating(database, exists) as session:
        group = DeviceGroup(
            id=new_id("grp"),
            name=name,
            description=description,
            kind="dynamic" if filter_expression is not None else "static",
            filter=filter_expression,
            created_at=utcnow(),
        )
        session.add(group)
        await session.flush()
        await refuse_unfit_group_given_as_scope(session, group)
        await record(
            session,
            actor=principal.actor,
            action="group.created",
            object_type="device_group",
            object_id=group.id,
            details={"name": name, "kind": group.kind, "filter": filter_expression},
        )
    return group


async def delete_group(database: Database, principal: Principal, name: str) -> None:
    async with database.transaction() as session:
        group = await get_group(session, name)
        _ensure_everywhere(principal, Permission.DEVICES_MANAGE)
        await session.delete(group)
        await record(
            session,
            actor=principal.actor,
            action="group.deleted",
            object_type="device_group",
            object_id=group.id,
            details={"name": name},
        )


async def set_membership(
    database: Database, principal: Principal, name: str, device_ids: list[str], *, add: bool
) -> int:
    """Adds devices to (or removes them from) a static group: needs devices:manage on the group, on
    every device, and in every group the change moves a device into or out of (a dynamic group
    whose filter reads `group`: scopes.checking_moves)."""
    async with database.transaction() as session:
        group = await managed_static_group(session, principal, name)
        changed = 0
        for device_id in dict.fromkeys(device_ids):
            device = await get_permitted_device(session, principal, device_id, Permission.DEVICES_MANAGE)
            member = await session.get(GroupMember, (group.id, device.id))
            if add == (member is not None):
                continue
            async with checking_moves(session, principal, device.id):  # dynamic groups that read `group`
                if member is None:
                    session.add(GroupMember(group_id=group.id, device_id=device.id))
                else:
                    await session.delete(member)
            changed += 1
        await record(
            session,
            actor=principal.actor,
            action="group.members_added" if add else "group.members_removed",
            object_type="device_group",
            object_id=group.id,
            details={"name": name, "devices": device_ids},
        )
    return changed


def group_condition(group: DeviceGroup) -> ColumnElement[bool]:
    """The devices of a group, as SQL: its members, or its filter evaluated now."""
    if group.kind == "dynamic" and group.filter:
        return compile_filter(group.filter)
    return exists().where(GroupMember.device_id == Device.id, GroupMember.group_id == group.id)


async def record_security_event(
    database: Database, device: Device, code: str, detail: str, *, address: str | None
) -> None:
    async with database.transaction() as session:
        await record(
            session,
            actor=device_actor(device, address),
            action="device.security_event",
            object_type="device",
            object_id=device.id,
            outcome="failure",
            details={"reason": code, "detail": detail},
        )


def device_actor(device: Device, address: str | None) -> Actor:
    return Actor(kind="device", id=device.id, name=device.serial or device.device_type, address=address)

"""Refuses a device group that cannot scope a permission where it would be given as one: in a
role assignment, a role's or an API token's grants (a check registered into access), and as a
new group's filter under a name that grants give as a scope already (a group deleted and created
again).

Such a group reaches no device as a scope whatever happens (scopes.scope_condition decides that
where permissions are evaluated); refusing it here tells the administrator, who would otherwise
give a scope that silently reaches nothing. See docs/access.md, "Scopes"."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import given_as_scope, register_scope_check
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.devices.models import DeviceGroup
from fleetkeeper.devices.scopes import device_reported_fields

SCOPE_KIND = "device_group"
_INSTEAD = (
    "use a static group, or a dynamic group whose filter reads only what the server and operators "
    "decide: tags, static groups, status, the device's identity (device_type, serial, mac, identity.*)"
)


def _unsafe(detail: str, unfit: dict[str, list[str]]) -> ProblemError:
    return ProblemError(
        detail,
        code="unsafe_scope_group",
        status=422,
        groups=[{"name": name, "device_reported_fields": fields} for name, fields in unfit.items()],
    )


async def refuse_unfit_scopes(session: AsyncSession, names: list[str]) -> None:
    """422 unsafe_scope_group when any of these names is a group whose filter reads what devices
    report about themselves. Names of no group pass: a group made later under one is checked then."""
    groups = (await session.scalars(select(DeviceGroup).where(DeviceGroup.name.in_(names)))).all()
    unfit = {
        group.name: fields
        for group in sorted(groups, key=lambda g: g.name)
        if (fields := device_reported_fields(group))
    }
    if not unfit:
        return
    named = ", ".join(f"{name} (its filter reads {', '.join(fields)})" for name, fields in unfit.items())
    noun = "group" if len(unfit) == 1 else "groups"
    raise _unsafe(
        f"the device {noun} {named} cannot scope a permission: devices report these fields about "
        f"themselves, so such a scope reaches no device; {_INSTEAD}",
        unfit,
    )


async def refuse_unfit_group_given_as_scope(session: AsyncSession, group: DeviceGroup) -> None:
    """A new group whose filter cannot scope a permission, under a name that grants already give
    as a scope (the group they named was deleted): 422 unsafe_scope_group. Under any other name it
    is made (a deployment target, a search) and the grants that would name it later are refused."""
    fields = device_reported_fields(group)
    if not fields or not await given_as_scope(session, SCOPE_KIND, group.name):
        return
    raise _unsafe(
        f"the name {group.name} is given as a scope (by role assignments, roles or API tokens), and "
        f"this filter reads {', '.join(fields)}, which devices report about themselves: as a scope "
        f"it would reach no device. Choose another name, or {_INSTEAD}",
        {group.name: fields},
    )


def register() -> None:
    """Done by the composition root (server/wiring.py)."""
    register_scope_check(SCOPE_KIND, refuse_unfit_scopes)

"""Roles: the built-in ones and custom ones, what a user's roles grant, and giving roles to a user.
Nobody writes or hands out a role granting more than they hold themselves."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import administrators
from fleetkeeper.access.models import Role, RoleAssignment
from fleetkeeper.access.permissions import BUILTIN_ROLES, GrantSet, Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.scopes import check_scopes, scope_names
from fleetkeeper.audit.service import record
from fleetkeeper.core.db import Database
from fleetkeeper.core.errors import ConflictError, ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.lookups import creating, one_or_404

ROLE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\Z")
SCOPE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}\Z")


@dataclass(frozen=True)
class RoleAssignmentSpec:
    role: str
    device_groups: list[str] | None = None
    release_tags: list[str] | None = None


def builtin_role_id(name: str) -> str:
    return f"rol_builtin_{name.replace('-', '_')}"


async def user_grants(session: AsyncSession, user_id: str) -> GrantSet:
    """The union of the user's roles, each narrowed by its assignment's scope."""
    rows = await session.execute(
        select(Role.grants, RoleAssignment.device_groups, RoleAssignment.release_tags)
        .join(RoleAssignment, RoleAssignment.role_id == Role.id)
        .where(RoleAssignment.user_id == user_id)
    )
    result = GrantSet.empty()
    for grants, device_groups, release_tags in rows:
        result = result.union(GrantSet.assigned(grants, device_groups, release_tags))
    return result


async def user_role_names(session: AsyncSession, user_id: str) -> list[str]:
    rows = await session.scalars(
        select(Role.name)
        .join(RoleAssignment, RoleAssignment.role_id == Role.id)
        .where(RoleAssignment.user_id == user_id)
    )
    return sorted(rows)


async def user_role_assignments(session: AsyncSession, user_id: str) -> list[RoleAssignmentSpec]:
    """The user's roles with the scope each is narrowed to (what `set_user_roles` takes back)."""
    rows = await session.execute(
        select(Role.name, RoleAssignment.device_groups, RoleAssignment.release_tags)
        .join(RoleAssignment, RoleAssignment.role_id == Role.id)
        .where(RoleAssignment.user_id == user_id)
        .order_by(Role.name)
    )
    return [RoleAssignmentSpec(name, groups, tags) for name, groups, tags in rows]


async def assign_roles(
    session: AsyncSession, actor: Principal, user_id: str, specs: list[RoleAssignmentSpec]
) -> list[str]:
    names = []
    for spec in specs:
        role = await session.scalar(select(Role).where(Role.name == spec.role))
        if role is None:
            raise ProblemError(f"no role named {spec.role}", code="unknown_role", status=422)
        for scope in (spec.device_groups or []) + (spec.release_tags or []):
            _check_scope_value(scope)
        granted = GrantSet.from_json(role.grants).narrowed(
            None if spec.device_groups is None else frozenset(spec.device_groups),
            None if spec.release_tags is None else frozenset(spec.release_tags),
        )
        # Nobody hands out more than they hold themselves.
        if not actor.grants.covers(granted):
            raise ForbiddenError(
                f"the role {spec.role} (with this scope) grants more than you hold",
                code="cannot_grant_beyond_own",
            )
        # The scopes it names, whether the role's own or this assignment's narrowing.
        given = scope_names(granted)
        given.setdefault("device_group", set()).update(spec.device_groups or ())
        given.setdefault("release_tag", set()).update(spec.release_tags or ())
        await check_scopes(session, given)
        session.add(
            RoleAssignment(
                user_id=user_id,
                role_id=role.id,
                device_groups=spec.device_groups,
                release_tags=spec.release_tags,
            )
        )
        names.append(role.name)
    await session.flush()
    return sorted(names)


def _check_scope_value(value: str) -> None:
    if not SCOPE_PATTERN.match(value):
        raise ProblemError(f"{value!r} is not a valid group or tag name", code="invalid_scope", status=422)


def _ensure_holds(actor: Principal, grants: GrantSet) -> None:
    """A role is written only by someone who holds all it grants (else: a way to widen one's own)."""
    if not actor.grants.covers(grants):
        raise ForbiddenError("the role grants permissions you do not hold", code="cannot_grant_beyond_own")


def validate_grants(grants: list[dict[str, Any]]) -> GrantSet:
    for grant in grants:
        try:
            permission = Permission(grant["permission"])
        except (KeyError, ValueError):
            raise ProblemError(
                f"unknown permission {grant.get('permission')!r}", code="unknown_permission", status=422
            ) from None
        scopes = grant.get("scopes")
        if scopes is not None:
            if permission.scope_kind is None:
                raise ProblemError(f"{permission.value} cannot be scoped", code="invalid_scope", status=422)
            if not scopes:
                raise ProblemError(
                    f"{permission.value}: an empty scope grants nothing; leave the permission out",
                    code="invalid_scope",
                    status=422,
                )
            for scope in scopes:
                _check_scope_value(scope)
    return GrantSet.from_json(grants)


async def list_roles(session: AsyncSession) -> Sequence[Role]:
    return (await session.scalars(select(Role).order_by(Role.is_builtin.desc(), Role.name))).all()


async def get_role(session: AsyncSession, name: str) -> Role:
    return await one_or_404(
        session,
        select(Role).where(Role.name == name),
        NotFoundError(f"no role named {name}", code="role_not_found"),
    )


async def create_role(
    database: Database, actor: Principal, *, name: str, description: str, grants: list[dict[str, Any]]
) -> Role:
    if not ROLE_NAME_PATTERN.match(name):
        raise ProblemError(
            "a role name is 1 to 64 lowercase letters, digits and dashes",
            code="invalid_role_name",
            status=422,
        )
    grant_set = validate_grants(grants)
    _ensure_holds(actor, grant_set)
    async with creating(
        database, ConflictError(f"a role named {name} exists", code="role_exists")
    ) as session:
        await check_scopes(session, scope_names(grant_set))
        role = Role(id=new_id("rol"), name=name, description=description, grants=grant_set.to_json())
        session.add(role)
        await session.flush()
        await record(
            session,
            actor=actor.actor,
            action="role.created",
            object_type="role",
            object_id=role.id,
            details={"name": name, "grants": role.grants},
        )
    return role


async def update_role(
    database: Database,
    actor: Principal,
    name: str,
    *,
    description: str | None,
    grants: list[dict[str, Any]] | None,
) -> Role:
    async with database.transaction() as session:
        admins = await administrators.lock(session)
        role = await get_role(session, name)
        if role.is_builtin:
            raise ConflictError("built-in roles cannot be changed; make a custom role", code="builtin_role")
        _ensure_holds(actor, GrantSet.from_json(role.grants))
        if grants is not None:
            new_grants = validate_grants(grants)
            _ensure_holds(actor, new_grants)
            await check_scopes(session, scope_names(new_grants))
            role.grants = new_grants.to_json()
            await admins.ensure_one_remains(session)
        if description is not None:
            role.description = description
        await record(
            session,
            actor=actor.actor,
            action="role.updated",
            object_type="role",
            object_id=role.id,
            details={"name": name, "grants": role.grants},
        )
    return role


async def delete_role(database: Database, actor: Principal, name: str) -> None:
    async with database.transaction() as session:
        role = await get_role(session, name)
        if role.is_builtin:
            raise ConflictError("built-in roles cannot be deleted", code="builtin_role")
        _ensure_holds(actor, GrantSet.from_json(role.grants))
        in_use = await session.scalar(
            select(func.count()).select_from(RoleAssignment).where(RoleAssignment.role_id == role.id)
        )
        if in_use:
            raise ConflictError(f"the role {name} is given to {in_use} user(s)", code="role_in_use")
        await session.delete(role)
        await record(
            session,
            actor=actor.actor,
            action="role.deleted",
            object_type="role",
            object_id=role.id,
            details={"name": name},
        )


async def sync_builtin_roles(database: Database) -> None:
    """The code defines the built-in roles: at every start they are created or brought up to date
    (a release that adds a permission extends the admin role). Safe with replicas starting at once."""
    for name, (description, grants) in BUILTIN_ROLES.items():
        try:
            async with database.transaction() as session:
                role = await session.get(Role, builtin_role_id(name))
                if role is None:
                    session.add(
                        Role(
                            id=builtin_role_id(name),
                            name=name,
                            description=description,
                            grants=grants,
                            is_builtin=True,
                        )
                    )
                elif role.grants != grants or role.description != description:
                    role.grants = grants
                    role.description = description
        except IntegrityError:
            continue

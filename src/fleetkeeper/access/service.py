"""Accounts, roles and the access policy. Other domains reach access through this module."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import administrators, reauth
from fleetkeeper.access.models import AccessPolicy, ApiToken, Role, RoleAssignment, SignInSession, User
from fleetkeeper.access.passwords import (
    check_password_policy,
    generate_one_time_password,
    hash_password,
)
from fleetkeeper.access.permissions import BUILTIN_ROLES, GrantSet

# Other domains reach access through this module: these are part of its interface.
from fleetkeeper.access.permissions import Permission as Permission
from fleetkeeper.access.principal import Principal as Principal
from fleetkeeper.access.scopes import check_scopes, scope_names
from fleetkeeper.access.scopes import given_as_scope as given_as_scope
from fleetkeeper.access.scopes import register_scope_check as register_scope_check
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ConflictError, ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.ratelimit import RateLimiter

FIRST_ADMIN_USERNAME = "admin"
USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}\Z")
ROLE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\Z")
SCOPE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}\Z")


def normalize_username(username: str) -> str:
    return username.strip().lower()


def _check_username(username: str) -> str:
    normalized = normalize_username(username)
    if not USERNAME_PATTERN.match(normalized):
        raise ProblemError(
            "a username is 1 to 64 characters: letters, digits and . _ @ - (starting with a letter or digit)",
            code="invalid_username",
            status=422,
        )
    return normalized


# --- first start ------------------------------------------------------------------------------


async def ensure_first_admin(database: Database) -> str | None:
    """On a database without users, create the first administrator.

    Returns its one-time password (which must be changed at first sign-in), or None when users
    already exist. Safe when several replicas start at once: only one insert can win.
    """
    async with database.session() as session:
        if await session.scalar(select(func.count()).select_from(User)):
            return None
    password = generate_one_time_password()
    password_hash = await hash_password(password)
    try:
        async with database.transaction() as session:
            admin = User(
                id=new_id("usr"),
                username=FIRST_ADMIN_USERNAME,
                password_hash=password_hash,
                must_change_password=True,
            )
            session.add(admin)
            await session.flush()
            session.add(RoleAssignment(user_id=admin.id, role_id=builtin_role_id("admin")))
            await record(
                session,
                actor=SYSTEM,
                action="user.created",
                object_type="user",
                object_id=admin.id,
                details={"username": FIRST_ADMIN_USERNAME, "roles": ["admin"], "first_start": True},
            )
    except IntegrityError:
        return None
    return password


def builtin_role_id(name: str) -> str:
    return f"rol_builtin_{name.replace('-', '_')}"


# --- grants -----------------------------------------------------------------------------------


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


# --- users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleAssignmentSpec:
    role: str
    device_groups: list[str] | None = None
    release_tags: list[str] | None = None


async def get_user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id}", code="user_not_found")
    return user


async def list_users(session: AsyncSession, *, limit: int, after: str | None) -> Sequence[User]:
    query = select(User).order_by(User.id).limit(limit)
    if after:
        query = query.where(User.id > after)
    return (await session.scalars(query)).all()


async def create_user(
    database: Database,
    actor: Principal,
    *,
    username: str,
    password: str | None,
    email: str | None = None,
    display_name: str | None = None,
    roles: list[RoleAssignmentSpec] | None = None,
) -> tuple[User, str | None]:
    """A local account. The password given (or a generated one-time password, returned) must be
    changed at first sign-in: whoever set it knows it."""
    username = _check_username(username)
    one_time = None
    if password is None:
        password = one_time = generate_one_time_password()
    else:
        check_password_policy(password, username)
    password_hash = await hash_password(password)
    try:
        async with database.transaction() as session:
            user = User(
                id=new_id("usr"),
                username=username,
                password_hash=password_hash,
                must_change_password=True,
                email=email,
                display_name=display_name,
            )
            session.add(user)
            await session.flush()
            role_names = await _assign_roles(session, actor, user.id, roles or [])
            await record(
                session,
                actor=actor.actor,
                action="user.created",
                object_type="user",
                object_id=user.id,
                details={"username": username, "roles": role_names},
            )
    except IntegrityError:
        raise ConflictError(f"the username {username} is taken", code="username_taken") from None
    return user, one_time


async def set_user_roles(
    database: Database, actor: Principal, user_id: str, roles: list[RoleAssignmentSpec]
) -> list[str]:
    """Replaces the user's roles; never leaves no administrator (`administrators`). One's own
    roles change only from a signed-in session: an API token never changes its owner's account."""
    if user_id == actor.user_id:
        actor.ensure_session()
    async with database.transaction() as session:
        admins = await administrators.lock(session)
        await get_user(session, user_id)
        await ensure_outranks(session, actor, user_id)
        await session.execute(delete(RoleAssignment).where(RoleAssignment.user_id == user_id))
        names = await _assign_roles(session, actor, user_id, roles)
        await admins.ensure_one_remains(session)
        await record(
            session,
            actor=actor.actor,
            action="user.roles_changed",
            object_type="user",
            object_id=user_id,
            details={"roles": [_describe_assignment(spec) for spec in roles]},
        )
    return names


def _describe_assignment(spec: RoleAssignmentSpec) -> dict[str, Any]:
    return {"role": spec.role, "device_groups": spec.device_groups, "release_tags": spec.release_tags}


async def _assign_roles(
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


async def ensure_outranks(session: AsyncSession, actor: Principal, user_id: str) -> None:
    """Nobody administers an account that may do more than they may: that would be a way in."""
    if not actor.grants.covers(await user_grants(session, user_id)):
        raise ForbiddenError(
            "this account holds permissions you do not hold; ask someone who holds them",
            code="cannot_administer_stronger_user",
        )


async def set_user_disabled(database: Database, actor: Principal, user_id: str, disabled: bool) -> User:
    """Disabling ends every session and revokes every API token of the user at once; the last
    administrator is not disabled (`administrators`)."""
    if user_id == actor.user_id:
        raise ConflictError("you cannot disable your own account", code="cannot_modify_self")
    async with database.transaction() as session:
        admins = await administrators.lock(session)
        user = await get_user(session, user_id)
        await ensure_outranks(session, actor, user_id)
        if user.is_disabled == disabled:
            return user
        user.is_disabled = disabled
        if disabled:
            await admins.ensure_one_remains(session)
            await revoke_all_credentials(session, user_id)
        await record(
            session,
            actor=actor.actor,
            action="user.disabled" if disabled else "user.enabled",
            object_type="user",
            object_id=user_id,
            details={"username": user.username},
        )
    return user


async def end_sessions(session: AsyncSession, user_id: str) -> None:
    """Ends every sign-in session of the user (their API tokens stay)."""
    await session.execute(
        update(SignInSession)
        .where(SignInSession.user_id == user_id, SignInSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def revoke_all_credentials(session: AsyncSession, user_id: str) -> None:
    await end_sessions(session, user_id)
    await session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def delete_user(database: Database, actor: Principal, user_id: str) -> None:
    """Removes the account; the last administrator is not removed (`administrators`)."""
    if user_id == actor.user_id:
        raise ConflictError("you cannot delete your own account", code="cannot_modify_self")
    async with database.transaction() as session:
        admins = await administrators.lock(session)
        user = await get_user(session, user_id)
        await ensure_outranks(session, actor, user_id)
        username = user.username
        await session.delete(user)
        await admins.ensure_one_remains(session)
        await record(
            session,
            actor=actor.actor,
            action="user.deleted",
            object_type="user",
            object_id=user_id,
            details={"username": username},
        )


async def reset_password(database: Database, actor: Principal, user_id: str) -> str:
    """A new one-time password for someone who lost theirs; their sessions end. Nobody resets
    their own: with an API token that would turn the token into a session."""
    if user_id == actor.user_id:
        raise ConflictError(
            "you cannot reset your own password: change it under your account "
            "(POST /api/v1/me/password), or ask another administrator",
            code="cannot_modify_self",
        )
    password = generate_one_time_password()
    password_hash = await hash_password(password)
    async with database.transaction() as session:
        user = await get_user(session, user_id)
        await ensure_outranks(session, actor, user_id)
        if user.auth_source != "local":
            raise ConflictError(
                "this account signs in through the identity provider", code="not_a_local_account"
            )
        user.password_hash = password_hash
        user.must_change_password = True
        user.password_changed_at = utcnow()
        await revoke_all_credentials(session, user_id)
        await record(
            session, actor=actor.actor, action="user.password_reset", object_type="user", object_id=user_id
        )
    return password


async def recover_password(database: Database, username: str) -> str:
    """For someone at the server's console (`fleetkeeper users reset-password`): a new one-time
    password, the account's sessions ended. Recorded as done by the server itself."""
    password = generate_one_time_password()
    password_hash = await hash_password(password)
    async with database.transaction() as session:
        user = await session.scalar(select(User).where(User.username == normalize_username(username)))
        if user is None or user.auth_source != "local":
            raise NotFoundError(f"no local account named {username}", code="user_not_found")
        user.password_hash = password_hash
        user.must_change_password = True
        user.password_changed_at = utcnow()
        user.is_disabled = False
        await revoke_all_credentials(session, user.id)
        await record(
            session,
            actor=SYSTEM,
            action="user.password_reset",
            object_type="user",
            object_id=user.id,
            details={"via": "command line", "username": user.username},
        )
    return password


async def change_own_password(
    database: Database, limiter: RateLimiter, principal: Principal, current_password: str, new_password: str
) -> None:
    """Checks the current password; other sessions and API tokens of the user stay (the
    password is not their secret), but other sign-in sessions end. Never through an API token."""
    principal.ensure_session()
    async with database.session() as session:
        user = await get_user(session, principal.user_id)
    if user.auth_source != "local":
        raise ConflictError("this account signs in through the identity provider", code="not_a_local_account")
    attempt = await reauth.reserve(limiter, user.id)
    await reauth.check_password(user, current_password)
    await attempt.succeeded()
    check_password_policy(new_password, user.username)
    if current_password == new_password:
        raise ProblemError(
            "the new password must differ from the current one", code="weak_password", status=422
        )
    new_hash = await hash_password(new_password)
    async with database.transaction() as session:
        user = await get_user(session, principal.user_id)
        user.password_hash = new_hash
        user.must_change_password = False
        user.password_changed_at = utcnow()
        await session.execute(
            update(SignInSession)
            .where(
                SignInSession.user_id == user.id,
                SignInSession.revoked_at.is_(None),
                SignInSession.id != (principal.session_id or ""),
            )
            .values(revoked_at=utcnow())
        )
        await record(
            session,
            actor=principal.actor,
            action="user.password_changed",
            object_type="user",
            object_id=user.id,
        )


# --- roles ------------------------------------------------------------------------------------


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
    role = await session.scalar(select(Role).where(Role.name == name))
    if role is None:
        raise NotFoundError(f"no role named {name}", code="role_not_found")
    return role


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
    try:
        async with database.transaction() as session:
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
    except IntegrityError:
        raise ConflictError(f"a role named {name} exists", code="role_exists") from None
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


# --- policy -----------------------------------------------------------------------------------


async def get_policy(session: AsyncSession) -> AccessPolicy:
    policy = await session.get(AccessPolicy, 1)
    if policy is None:
        policy = AccessPolicy(id=1, require_2fa_roles=[])
        session.add(policy)
        await session.flush()
    return policy


async def set_require_2fa_roles(database: Database, actor: Principal, roles: list[str]) -> list[str]:
    async with database.transaction() as session:
        known = set(await session.scalars(select(Role.name).where(Role.name.in_(roles))))
        unknown = sorted(set(roles) - known)
        if unknown:
            raise ProblemError(f"no roles named {', '.join(unknown)}", code="unknown_role", status=422)
        policy = await get_policy(session)
        policy.require_2fa_roles = sorted(set(roles))
        policy.updated_at = utcnow()
        await record(
            session,
            actor=actor.actor,
            action="policy.two_factor_roles_changed",
            object_type="access_policy",
            object_id="1",
            details={"require_2fa_roles": policy.require_2fa_roles},
        )
        return policy.require_2fa_roles


async def roles_requiring_2fa(session: AsyncSession) -> set[str]:
    """Read only: the policy row is created by the first change, not by readers."""
    policy = await session.get(AccessPolicy, 1)
    return set(policy.require_2fa_roles) if policy else set()


async def pending_actions(session: AsyncSession, user: User) -> list[str]:
    """What a user must do before anything else: change a one-time password, enrol 2FA."""
    pending = []
    if user.must_change_password and user.auth_source == "local":
        pending.append("change_password")
    if user.totp_enabled_at is None and await roles_requiring_2fa(session) & set(
        await user_role_names(session, user.id)
    ):
        pending.append("enroll_2fa")
    return pending

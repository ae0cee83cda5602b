"""User accounts: creating them (the first administrator too), their roles, disabling and deleting,
their passwords and sessions. Every change here keeps an administrator (`administrators`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import administrators, reauth
from fleetkeeper.access.models import ApiToken, RoleAssignment, SignInSession, User
from fleetkeeper.access.passwords import check_password_policy, generate_one_time_password, hash_password
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.roles import RoleAssignmentSpec, assign_roles, builtin_role_id, user_grants
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ConflictError, ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.lookups import creating, get_or_404, one_or_404
from fleetkeeper.core.ratelimit import RateLimiter

FIRST_ADMIN_USERNAME = "admin"
USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}\Z")


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


async def get_user(session: AsyncSession, user_id: str) -> User:
    return await get_or_404(
        session, User, user_id, NotFoundError(f"no user {user_id}", code="user_not_found")
    )


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
    taken = ConflictError(f"the username {username} is taken", code="username_taken")
    async with creating(database, taken) as session:
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
        role_names = await assign_roles(session, actor, user.id, roles or [])
        await record(
            session,
            actor=actor.actor,
            action="user.created",
            object_type="user",
            object_id=user.id,
            details={"username": username, "roles": role_names},
        )
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
        names = await assign_roles(session, actor, user_id, roles)
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
        user = await one_or_404(
            session,
            select(User).where(User.username == normalize_username(username), User.auth_source == "local"),
            NotFoundError(f"no local account named {username}", code="user_not_found"),
        )
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

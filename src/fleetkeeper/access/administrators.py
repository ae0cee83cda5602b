"""Someone must always be able to do everything: the rule that keeps the last administrator.

An administrator is an enabled user whose roles grant every permission, unscoped
(`GrantSet.everything()`). Nobody gives a role that grants more than they hold, so only an
administrator can make another one: with users:manage alone, or a scoped admin role, the rest of
the permissions could never be given again. A change that would leave none where there was one —
deleting, disabling or demoting the last one, or narrowing a role they are one through — is
refused. Two administrators removing each other at once must not both succeed: every such change
takes the same lock first and checks what is left inside its own transaction, after its change.

The identity provider's changes are not refused (that would lock the user out): oidc.py keeps
the last administrator's roles instead. When there is none all the same (a database restored from
before), someone at the server's machine makes one: `grant_admin_role`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.models import Role, RoleAssignment, User
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import Database
from fleetkeeper.core.errors import ConflictError, NotFoundError, ProblemError
from fleetkeeper.core.lookups import one_or_404

# A transaction-scoped PostgreSQL advisory lock, released at commit or rollback. SQLite needs
# none: its write transactions begin IMMEDIATE (core/db.py) and so already run one at a time.
_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('fleetkeeper.access.administrators'))")
ADMIN_ROLE = "admin"


class LastAdministratorError(ConflictError):
    code = "last_administrator"

    def __init__(self) -> None:
        super().__init__(
            "this would leave no administrator (an enabled user holding every permission, unscoped): "
            "first give the admin role to another enabled user, then try again; when nobody can, "
            "run 'fleetkeeper users grant-admin USERNAME' on the server's machine"
        )


def is_administrator(grants: GrantSet) -> bool:
    return grants.covers(GrantSet.everything())


async def holders(session: AsyncSession) -> frozenset[str]:
    """The administrators' user ids, as this transaction sees them (changes flushed)."""
    rows = await session.execute(
        select(RoleAssignment.user_id, Role.grants, RoleAssignment.device_groups, RoleAssignment.release_tags)
        .join(Role, Role.id == RoleAssignment.role_id)
        .join(User, User.id == RoleAssignment.user_id)
        .where(User.is_disabled.is_(False))
    )
    grants: dict[str, GrantSet] = {}
    for user_id, role_grants, device_groups, release_tags in rows:
        assigned = GrantSet.assigned(role_grants, device_groups, release_tags)
        grants[user_id] = grants.get(user_id, GrantSet.empty()).union(assigned)
    return frozenset(user_id for user_id, held in grants.items() if is_administrator(held))


@dataclass(frozen=True)
class Administrators:
    """Who the administrators were when the lock was taken, for a change made after."""

    before: frozenset[str]

    async def ensure_one_remains(self, session: AsyncSession) -> None:
        """Raises (rolling the caller's transaction back) when the change just made left none."""
        await session.flush()
        if self.before and not await holders(session):
            raise LastAdministratorError()

    def remain_if(self, user_id: str, grants: GrantSet) -> bool:
        """Whether one would remain if `user_id` (enabled) held exactly `grants` and nothing else
        changed: for deciding before changing."""
        return not self.before or bool(self.before - {user_id}) or is_administrator(grants)


async def lock(session: AsyncSession) -> Administrators:
    """Call before changing roles, role grants or who is enabled, in a `database.transaction()`."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_LOCK)
    return Administrators(await holders(session))


@dataclass(frozen=True)
class Granted:
    username: str
    granted: bool  # false: it held the admin role, unscoped, already
    enabled: bool  # the account was disabled, and is enabled now


async def grant_admin_role(database: Database, username: str) -> Granted:
    """For someone at the server's machine (`fleetkeeper users grant-admin`) when no administrator
    is left: gives the account the admin role, unscoped, and enables it. Its other roles stay.
    Recorded as done by the server itself: whoever can run it can write the database anyway."""
    async with database.transaction() as session:
        await lock(session)
        not_found = NotFoundError(f"no account named {username}", code="user_not_found")
        named = select(User).where(User.username == username.strip().lower())
        user = await one_or_404(session, named, not_found)
        role = await session.scalar(select(Role).where(Role.name == ADMIN_ROLE, Role.is_builtin.is_(True)))
        if role is None:
            raise ProblemError(
                "the built-in roles are not in the database yet: start the server once, then try again",
                code="builtin_roles_missing",
                status=409,
            )
        assignment = await session.get(RoleAssignment, (user.id, role.id))
        granted = (
            assignment is None or assignment.device_groups is not None or assignment.release_tags is not None
        )
        if assignment is None:
            session.add(RoleAssignment(user_id=user.id, role_id=role.id))
        else:
            assignment.device_groups = None
            assignment.release_tags = None
        enabled = user.is_disabled
        user.is_disabled = False
        if granted or enabled:
            await record(
                session,
                actor=SYSTEM,
                action="user.admin_granted",
                object_type="user",
                object_id=user.id,
                details={"via": "command line", "username": user.username, "enabled": enabled},
            )
        return Granted(user.username, granted, enabled)

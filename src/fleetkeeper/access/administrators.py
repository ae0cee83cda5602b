"""Someone must always be able to manage users: the rule that keeps the last administrator.

An administrator here is an enabled user holding `users:manage` (a permission without scopes, so
every holder holds it everywhere). A change that would leave none — deleting, disabling or
demoting the last one, or taking the permission out of the role they hold it through — is refused.
Two administrators removing each other at once must not both succeed: every such change takes the
same lock first and checks what is left inside its own transaction, after its change.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.models import Role, RoleAssignment, User
from fleetkeeper.access.permissions import GrantSet, Permission
from fleetkeeper.core.errors import ConflictError

# A transaction-scoped PostgreSQL advisory lock, released at commit or rollback. SQLite needs
# none: its write transactions begin IMMEDIATE (core/db.py) and so already run one at a time.
_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('fleetkeeper.access.administrators'))")


class LastAdministratorError(ConflictError):
    code = "last_administrator"

    def __init__(self) -> None:
        super().__init__(
            "this would leave nobody who can manage users: first give users:manage (e.g. the admin "
            "role) to another enabled user, then try again"
        )


async def lock(session: AsyncSession) -> None:
    """Call before reading or changing who holds users:manage, in a `database.transaction()`."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_LOCK)


async def count(session: AsyncSession) -> int:
    """Enabled users holding users:manage, as this transaction sees them (changes flushed)."""
    roles = await session.execute(select(Role.id, Role.grants))
    managing = [
        role_id for role_id, grants in roles if GrantSet.from_json(grants).allows(Permission.USERS_MANAGE)
    ]
    if not managing:
        return 0
    holders = await session.scalar(
        select(func.count(func.distinct(User.id)))
        .join(RoleAssignment, RoleAssignment.user_id == User.id)
        .where(RoleAssignment.role_id.in_(managing), User.is_disabled.is_(False))
    )
    return int(holders or 0)


async def ensure_one_remains(session: AsyncSession) -> None:
    """Raises (rolling the caller's transaction back) when the change just made left none."""
    await session.flush()
    if await count(session) == 0:
        raise LastAdministratorError()

"""The access policy: which roles must use a second factor, and what a user must do first."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.models import AccessPolicy, Role, User
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.roles import user_role_names
from fleetkeeper.audit.service import record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ProblemError


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

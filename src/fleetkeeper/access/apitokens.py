"""Personal API tokens: named, expiring, never more than their owner may do, shown once.

A token outlives the session that made it and a change of its owner's password, so making one asks
who is at the keyboard as turning 2FA on does (`reauth`): a stolen session alone cannot mint one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import reauth
from fleetkeeper.access.models import ApiToken
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.scopes import check_scopes, scope_names
from fleetkeeper.access.service import get_user, validate_grants
from fleetkeeper.access.tokens import hash_secret, new_secret
from fleetkeeper.audit.service import record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ConflictError, ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.lookups import creating, one_or_404
from fleetkeeper.core.ratelimit import RateLimiter

TOKEN_PREFIX = "fkpat"  # noqa: S105 -- a marker, not a secret
MAX_LIFETIME = timedelta(days=366)


def format_token(token_id: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}.{token_id}.{secret}"


def parse_token(value: str) -> tuple[str, str] | None:
    prefix, _, rest = value.partition(".")
    token_id, _, secret = rest.partition(".")
    if prefix != TOKEN_PREFIX or not token_id or not secret:
        return None
    return token_id, secret


async def create(
    database: Database,
    limiter: RateLimiter,
    owner: Principal,
    *,
    name: str,
    expires_in: timedelta,
    grants: list[dict[str, Any]] | None,
    password: str | None = None,
) -> tuple[ApiToken, str]:
    """Needs the owner's current password unless their session began moments ago (`reauth`).
    Grants default to everything the owner holds now; either way they are re-checked against
    the owner's grants on every use, so a token loses what its owner loses."""
    owner.ensure_session()
    if not timedelta(minutes=5) <= expires_in <= MAX_LIFETIME:
        raise ProblemError("a token lives between 5 minutes and 366 days", code="invalid_expiry", status=422)
    requested = owner.grants if grants is None else validate_grants(grants)
    if not owner.grants.covers(requested):
        raise ForbiddenError(
            "a token cannot hold permissions its owner lacks", code="cannot_grant_beyond_own"
        )
    if grants is not None:  # the owner's own grants are not theirs to fix here
        async with database.session() as session:
            await check_scopes(session, scope_names(requested))
    attempt = await reauth.reserve(limiter, owner.user_id) if password is not None else None
    async with database.session() as session:
        user = await get_user(session, owner.user_id)
        await reauth.ensure_present(session, owner, user, password)
    if attempt is not None:
        await attempt.succeeded()
    secret = new_secret()
    now = utcnow()
    taken = ConflictError(f"you already have a token named {name}", code="token_name_taken")
    async with creating(database, taken) as session:
        token = ApiToken(
            id=new_id("tok"),
            user_id=owner.user_id,
            name=name,
            token_hash=hash_secret(secret),
            grants=requested.to_json(),
            created_at=now,
            expires_at=now + expires_in,
        )
        session.add(token)
        await session.flush()
        await record(
            session,
            actor=owner.actor,
            action="api_token.created",
            object_type="api_token",
            object_id=token.id,
            details={"name": name, "grants": token.grants, "expires_at": token.expires_at.isoformat()},
        )
    return token, format_token(token.id, secret)


async def list_for(session: AsyncSession, user_id: str) -> Sequence[ApiToken]:
    return (
        await session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.created_at.desc())
        )
    ).all()


async def revoke(database: Database, principal: Principal, token_id: str) -> None:
    async with database.transaction() as session:
        live = select(ApiToken).where(
            ApiToken.id == token_id, ApiToken.user_id == principal.user_id, ApiToken.revoked_at.is_(None)
        )
        token = await one_or_404(session, live, NotFoundError("no such token", code="token_not_found"))
        token.revoked_at = utcnow()
        await record(
            session,
            actor=principal.actor,
            action="api_token.revoked",
            object_type="api_token",
            object_id=token_id,
            details={"name": token.name},
        )


def effective_grants(token: ApiToken, owner_grants: GrantSet) -> GrantSet:
    return GrantSet.from_json(token.grants).intersection(owner_grants)

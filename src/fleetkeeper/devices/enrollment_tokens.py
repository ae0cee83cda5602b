"""Batch enrollment tokens: operators create, list and revoke them; an enrollment request spends a use."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.access.tokens import hash_secret, new_secret, secret_matches
from fleetkeeper.audit.service import record
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import (
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
)
from fleetkeeper.core.ids import new_id
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.devices.models import EnrollmentToken
from fleetkeeper.devices.service import list_groups, managed_static_group


async def valid_token(session: AsyncSession, value: str) -> EnrollmentToken:
    """The token the value names, if its secret matches and it can still be used. Not locked: the
    use is counted by `count_use` at the end of the transaction, which checks all this again."""
    invalid = UnauthenticatedError("the enrollment token is not valid", code="invalid_enrollment_token")
    token_id, _, secret = value.partition(".")
    token = await session.get(EnrollmentToken, token_id) if token_id else None
    if token is None or not secret_matches(secret, token.token_hash):
        raise invalid
    if token.revoked_at is not None or token.expires_at <= utcnow() or token.uses >= token.max_uses:
        raise _token_spent()
    return token


async def count_use(session: AsyncSession, token: EnrollmentToken) -> None:
    # Counted in the same statement as the checks, so that concurrent devices cannot overrun the
    # uses, nor enroll with a token revoked since `valid_token` read it.
    used = await session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.id == token.id,
            EnrollmentToken.uses < EnrollmentToken.max_uses,
            EnrollmentToken.revoked_at.is_(None),
            EnrollmentToken.expires_at > utcnow(),
        )
        .values(uses=EnrollmentToken.uses + 1)
        .execution_options(synchronize_session=False)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise _token_spent()


def _token_spent() -> UnauthenticatedError:
    return UnauthenticatedError(
        "the enrollment token has expired, is used up or was revoked", code="invalid_enrollment_token"
    )


def _token_in_scope(principal: Principal, token: EnrollmentToken, group_names: dict[str, str]) -> bool:
    """A scoped operator sees and revokes only the tokens that enrol into their groups."""
    scopes = principal.grants.scopes(Permission.DEVICES_MANAGE)
    return scopes is None or (token.group_id is not None and group_names.get(token.group_id) in scopes)


async def group_names(session: AsyncSession) -> dict[str, str]:
    return {group.id: group.name for group in await list_groups(session)}


def ensure_may_enroll_into_no_group(principal: Principal) -> None:
    """A device in no group is reached only by unscoped grants: enrolling one needs devices:manage
    everywhere. (Into groups: devices:manage in each, `managed_static_group`.)"""
    if principal.grants.scopes(Permission.DEVICES_MANAGE) is not None:
        raise ForbiddenError(
            "a device in no group needs devices:manage on all devices: name a group of yours",
            permission=Permission.DEVICES_MANAGE.value,
        )


async def list_tokens(session: AsyncSession, principal: Principal) -> list[EnrollmentToken]:
    """The enrollment tokens the caller may see, newest first."""
    rows = (await session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.created_at.desc()))).all()
    names = await group_names(session)
    return [row for row in rows if _token_in_scope(principal, row, names)]


async def create_token(
    runtime: DevicesContext,
    principal: Principal,
    *,
    name: str,
    expires_in: timedelta,
    max_uses: int,
    auto_accept: bool,
    group_name: str | None,
) -> tuple[EnrollmentToken, str]:
    """A batch enrollment token for factory provisioning: expiring, limited uses, optionally
    accepting its devices straight into a group. The secret is returned here only."""
    group = None
    if group_name:
        async with runtime.database.session() as session:
            group = await managed_static_group(session, principal, group_name)
    else:
        ensure_may_enroll_into_no_group(principal)
    secret = new_secret()
    async with runtime.database.transaction() as session:
        token = EnrollmentToken(
            id=new_id("etk"),
            name=name,
            token_hash=hash_secret(secret),
            created_by=principal.user_id,
            created_at=utcnow(),
            expires_at=utcnow() + expires_in,
            max_uses=max_uses,
            uses=0,
            auto_accept=auto_accept,
            group_id=group.id if group else None,
        )
        session.add(token)
        await session.flush()
        await record(
            session,
            actor=principal.actor,
            action="enrollment_token.created",
            object_type="enrollment_token",
            object_id=token.id,
            details={
                "name": name,
                "max_uses": max_uses,
                "auto_accept": auto_accept,
                "group": group.name if group else None,
                "expires_at": token.expires_at.isoformat(),
            },
        )
    return token, f"{token.id}.{secret}"


async def revoke_token(runtime: DevicesContext, principal: Principal, token_id: str) -> None:
    not_found = NotFoundError("no such enrollment token", code="enrollment_token_not_found")
    async with runtime.database.transaction() as session:
        token = await session.get(EnrollmentToken, token_id)
        if token is None or token.revoked_at is not None:
            raise not_found
        if not _token_in_scope(principal, token, await group_names(session)):
            raise not_found
        token.revoked_at = utcnow()
        await record(
            session,
            actor=principal.actor,
            action="enrollment_token.revoked",
            object_type="enrollment_token",
            object_id=token_id,
            details={"name": token.name},
        )

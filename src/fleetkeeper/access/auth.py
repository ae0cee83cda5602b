"""FastAPI dependencies that authenticate a request and enforce the route's declared access."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import Depends
from sqlalchemy import select, update
from starlette.requests import HTTPConnection

from fleetkeeper.access import apitokens
from fleetkeeper.access.context import AccessContext, access_context
from fleetkeeper.access.models import ApiToken, SignInSession, User
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.service import pending_actions, user_grants
from fleetkeeper.access.tokens import AccessClaims, secret_matches
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ForbiddenError, UnauthenticatedError
from fleetkeeper.core.routeaccess import AccessRule, mark, public_dependency

MAX_CREDENTIAL_LENGTH = 4096
LAST_USED_RESOLUTION = timedelta(minutes=1)
_PENDING_CODES = {
    "change_password": (
        "password_change_required",
        "change the one-time password first (POST /api/v1/me/password)",
    ),
    "enroll_2fa": (
        "second_factor_enrollment_required",
        "your role requires two-factor sign-in: enrol first (POST /api/v1/me/2fa/totp)",
    ),
}


def _unauthenticated(detail: str, code: str = "unauthenticated") -> UnauthenticatedError:
    return UnauthenticatedError(detail, code=code)


def client_address(connection: HTTPConnection) -> str | None:
    return connection.client.host if connection.client else None


async def authenticate(connection: HTTPConnection, *, allow_pending: bool = False) -> Principal:
    cached: Principal | None = getattr(connection.state, "principal", None)
    try:
        principal = cached or await _authenticate(connection)
    except UnauthenticatedError as exc:
        exc.headers.setdefault("WWW-Authenticate", "Bearer")
        raise
    connection.state.principal = principal
    if principal.pending and not allow_pending:
        code, detail = _PENDING_CODES.get(principal.pending[0], ("action_required", principal.pending[0]))
        raise ForbiddenError(detail, code=code, pending_actions=list(principal.pending))
    return principal


async def _authenticate(connection: HTTPConnection) -> Principal:
    scheme, _, credential = connection.headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise _unauthenticated("sign in and send the access token as 'Authorization: Bearer …'")
    return await _principal_for(connection, credential)


async def authenticate_credential(
    connection: HTTPConnection, credential: str, *, allow_pending: bool = False
) -> Principal:
    """As `authenticate`, for a credential that did not come in the Authorization header (a
    browser's WebSocket cannot set it: the terminal takes it in its first message)."""
    principal = await _principal_for(connection, credential)
    if principal.pending and not allow_pending:
        code, detail = _PENDING_CODES.get(principal.pending[0], ("action_required", principal.pending[0]))
        raise ForbiddenError(detail, code=code, pending_actions=list(principal.pending))
    return principal


async def _principal_for(connection: HTTPConnection, credential: str) -> Principal:
    runtime = access_context(connection)
    if len(credential) > MAX_CREDENTIAL_LENGTH:
        raise _unauthenticated("the credential is too long", code="invalid_token")
    parsed = apitokens.parse_token(credential)
    if parsed is not None:
        principal = await _from_api_token(runtime, *parsed, address=client_address(connection))
    else:
        principal = await _from_access_token(runtime, credential, address=client_address(connection))
    await runtime.rate_limiter.hit(
        runtime.settings.api_limit_per_principal,
        "api",
        principal.rate_limit_key,
        detail="too many API requests",
    )
    return principal


async def _from_access_token(runtime: AccessContext, token: str, *, address: str | None) -> Principal:
    return await principal_from_claims(runtime, await runtime.keyring.verify_access_token(token), address)


async def principal_from_claims(
    runtime: AccessContext, claims: AccessClaims, address: str | None, *, fresh_pending: bool = False
) -> Principal:
    """The user behind verified token claims, if their account and session are still live.
    `fresh_pending`: the actions the user must take first are read from the database rather than
    the token (a console token lives hours; an access token, minutes)."""
    async with runtime.database.session() as session:
        found = (
            await session.execute(
                select(User, SignInSession)
                .join(SignInSession, SignInSession.user_id == User.id)
                .where(User.id == claims.user_id, SignInSession.id == claims.session_id)
            )
        ).one_or_none()
        if found is None:
            raise _unauthenticated("the access token is not valid", code="invalid_token")
        user, sign_in = found
        if user.is_disabled:
            raise _unauthenticated("this account is disabled", code="account_disabled")
        if sign_in.revoked_at is not None or sign_in.expires_at <= utcnow():
            raise _unauthenticated("this session has ended: sign in again", code="session_ended")
        grants = await user_grants(session, user.id)
        pending = tuple(await pending_actions(session, user)) if fresh_pending else claims.pending
    return Principal(
        user_id=user.id,
        username=user.username,
        grants=grants,
        method=sign_in.auth_method,
        session_id=sign_in.id,
        pending=pending,
        address=address,
    )


async def _from_api_token(
    runtime: AccessContext, token_id: str, secret: str, *, address: str | None
) -> Principal:
    now = utcnow()
    async with runtime.database.session() as session:
        found = (
            await session.execute(
                select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.id == token_id)
            )
        ).one_or_none()
        if found is None or not secret_matches(secret, found[0].token_hash):
            raise _unauthenticated("the API token is not valid", code="invalid_token")
        token, user = found
        if token.revoked_at is not None:
            raise _unauthenticated("the API token was revoked", code="token_revoked")
        if token.expires_at <= now:
            raise _unauthenticated("the API token has expired", code="token_expired")
        if user.is_disabled:
            raise _unauthenticated("this account is disabled", code="account_disabled")
        grants = apitokens.effective_grants(token, await user_grants(session, user.id))
        pending = tuple(await pending_actions(session, user))
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        async with runtime.database.transaction() as session:
            await session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
    return Principal(
        user_id=user.id,
        username=user.username,
        grants=grants,
        method="api_token",
        api_token_id=token.id,
        pending=pending,
        address=address,
    )


def requires(*permissions: Permission) -> Any:
    """The caller holds every listed permission somewhere; the route narrows it to the object's
    groups or tags with `principal.ensure(permission, scope)`."""

    async def dependency(connection: HTTPConnection) -> Principal:
        principal = await authenticate(connection)
        for permission in permissions:
            principal.ensure(permission)
        return principal

    rule = AccessRule("permission", tuple(permission.value for permission in permissions))
    return Depends(mark(rule, dependency))


def signed_in(*, allow_pending: bool = False) -> Any:
    """Any signed-in user (routes about the caller's own account)."""

    async def dependency(connection: HTTPConnection) -> Principal:
        return await authenticate(connection, allow_pending=allow_pending)

    return Depends(mark(AccessRule("authenticated", allow_pending=allow_pending), dependency))


def in_session(*, allow_pending: bool = False) -> Any:
    """A user signed in with a password or through SSO, not an API token (changes to the
    caller's own account: password, second factor, sessions, tokens)."""

    async def dependency(connection: HTTPConnection) -> Principal:
        principal = await authenticate(connection, allow_pending=allow_pending)
        principal.ensure_session()
        return principal

    return Depends(mark(AccessRule("authenticated", allow_pending=allow_pending), dependency))


PUBLIC = Depends(public_dependency)

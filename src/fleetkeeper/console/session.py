"""Console sign-in state: a console token in an HttpOnly cookie, CSRF on every change, page access.

The cookie holds a short JWT of the `fleetkeeper-console` audience bound to a sign-in session; it
is renewed while it is used and dies with the session (sign-out, revocation, disabled account).
Each session has its own CSRF token, carried inside the signed cookie token, rendered into every
page and required on every request that changes something.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from urllib.parse import quote

from fastapi import Depends
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Scope

from fleetkeeper.access.auth import client_address, principal_from_claims
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.signin import TokenPair
from fleetkeeper.access.tokens import CONSOLE_AUDIENCE, CONSOLE_TOKEN_TTL, AccessClaims
from fleetkeeper.console.context import console_context
from fleetkeeper.console.headers import ResponseStartHook
from fleetkeeper.core.errors import ForbiddenError, ProblemError, UnauthenticatedError
from fleetkeeper.core.routeaccess import AccessRule, mark

SESSION_COOKIE = "fleetkeeper_console"
# Before sign-in there is no session: the sign-in form is bound to the browser by a random value
# kept in this cookie and repeated in the form (login CSRF).
PRE_SESSION_COOKIE = "fleetkeeper_console_pre"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_COOKIE_LENGTH = 4096


class SignInRequiredError(ProblemError):
    """No live console session: pages answer with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in to use the console", code="unauthenticated", status=401)
        self.next_path = next_path


class PendingActionError(ProblemError):
    """The user must change a one-time password or enrol a second factor first."""

    def __init__(self, action: str) -> None:
        super().__init__("finish setting up your account first", code="action_required", status=403)
        self.action = action


def _secure(connection: HTTPConnection) -> bool:
    return connection.url.scheme in ("https", "wss")


def set_session_cookie(response: Response, connection: HTTPConnection, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(CONSOLE_TOKEN_TTL.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(connection),
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


async def issue_console_token(connection: HTTPConnection, pair: TokenPair, user_id: str) -> str:
    """A console token for a session that `SignIn` just started."""
    keyring = console_context(connection).keyring
    token, _ = await keyring.issue_access_token(
        user_id,
        pair.session_id,
        (),  # pending actions are read afresh on every request (current_principal)
        audience=CONSOLE_AUDIENCE,
        ttl=CONSOLE_TOKEN_TTL,
        csrf=secrets.token_urlsafe(24),
    )
    return token


async def _claims(connection: HTTPConnection) -> AccessClaims | None:
    token = connection.cookies.get(SESSION_COOKIE)
    if not token or len(token) > MAX_COOKIE_LENGTH:
        return None
    try:
        return await console_context(connection).keyring.verify_access_token(token, audience=CONSOLE_AUDIENCE)
    except UnauthenticatedError:
        return None


async def current_principal(connection: HTTPConnection) -> Principal | None:
    """The signed-in user of this browser, or None (no cookie, expired, session ended)."""
    cached = getattr(connection.state, "console_principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    claims = await _claims(connection)
    if claims is None:
        return None
    try:
        principal = await principal_from_claims(
            console_context(connection), claims, client_address(connection), fresh_pending=True
        )
    except UnauthenticatedError:
        return None
    connection.state.console_principal = principal
    connection.state.console_claims = claims
    return principal


async def websocket_principal(connection: HTTPConnection) -> Principal | None:
    """The console user behind a WebSocket from a console page, or None without a console cookie.

    Browsers send cookies with WebSockets from any site and no CORS applies, so the handshake's
    Origin must be this server's own (cross-site WebSocket hijacking)."""
    if SESSION_COOKIE not in connection.cookies:
        return None
    scheme = "https" if connection.url.scheme == "wss" else "http"
    if connection.headers.get("origin") != f"{scheme}://{connection.url.netloc}":
        raise ForbiddenError("this connection came from another site", code="csrf_failed")
    principal = await current_principal(connection)
    if principal is None:
        raise UnauthenticatedError("the console session has ended: sign in again", code="session_ended")
    if principal.pending:
        raise PendingActionError(principal.pending[0])
    return principal


def csrf_token(connection: HTTPConnection) -> str:
    claims: AccessClaims | None = getattr(connection.state, "console_claims", None)
    if claims is not None and claims.csrf:
        return claims.csrf
    pre_session: str | None = getattr(connection.state, "pre_session", None)
    return pre_session or connection.cookies.get(PRE_SESSION_COOKIE, "")


async def _sent_csrf(request: Request) -> str:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD, "")
        sent = value if isinstance(value, str) else ""
    return sent


async def check_csrf(request: Request, expected: str) -> None:
    """Refuses a change that does not carry this session's token or comes from another origin."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise ForbiddenError("this request came from another site", code="csrf_failed")
    sent = await _sent_csrf(request)
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ForbiddenError(
            "the form is missing its security token or it is stale: reload the page and try again",
            code="csrf_failed",
        )


async def _renewed_token(connection: HTTPConnection) -> str | None:
    """Sliding expiry: a token past half its life (or signed by a retired key) is replaced."""
    claims: AccessClaims | None = connection.scope.get("state", {}).get("console_claims")
    if claims is None:
        return None
    keyring = console_context(connection).keyring
    half_life = CONSOLE_TOKEN_TTL.total_seconds() / 2
    if claims.expires_at - time.time() > half_life and claims.kid == keyring.current_kid:
        return None
    token, _ = await keyring.issue_access_token(
        claims.user_id,
        claims.session_id,
        (),
        audience=CONSOLE_AUDIENCE,
        ttl=CONSOLE_TOKEN_TTL,
        csrf=claims.csrf,
    )
    return token


class SessionRenewal(ResponseStartHook):
    """Renews the console cookie on the responses of a session that is being used, unless the
    response sets or clears the cookie itself (sign-in, sign-out, an account change)."""

    async def amend(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        cookie_name = SESSION_COOKIE.encode() + b"="
        if any(name == b"set-cookie" and value.startswith(cookie_name) for name, value in headers):
            return headers
        token = await _renewed_token(HTTPConnection(scope))
        if token is None:
            return headers
        carrier = Response()
        set_session_cookie(carrier, HTTPConnection(scope), token)
        return headers + [header for header in carrier.raw_headers if header[0] == b"set-cookie"]


def _next_path(request: Request) -> str:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return quote(path, safe="/?=&")


def _page_dependency(
    permissions: tuple[Permission, ...], allow_pending: bool
) -> Callable[[Request], Awaitable[Principal]]:
    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
        if principal is None:
            raise SignInRequiredError(_next_path(request) if request.method in SAFE_METHODS else "/")
        if request.method not in SAFE_METHODS:
            await check_csrf(request, csrf_token(request))
        if principal.pending and not allow_pending:
            raise PendingActionError(principal.pending[0])
        for permission in permissions:
            principal.ensure(permission)
        return principal

    return dependency


def page(*permissions: Permission, allow_pending: bool = False) -> Any:
    """A console route for a signed-in user holding every listed permission (somewhere; the
    route narrows to groups and tags as the API does). Changes need the CSRF token.
    `allow_pending`: the pages that finish a first-login password change or 2FA enrolment."""
    kind: Literal["permission", "authenticated"] = "permission" if permissions else "authenticated"
    rule = AccessRule(kind, tuple(permission.value for permission in permissions), allow_pending)
    return Depends(mark(rule, _page_dependency(permissions, allow_pending)))

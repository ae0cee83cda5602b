"""Signing in and out of the console."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import quote, unquote

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import RedirectResponse, Response

from fleetkeeper.access import signin
from fleetkeeper.access.auth import PUBLIC, client_address
from fleetkeeper.access.auth_api import (
    CONSOLE_SSO_CALLBACK,
    CONSOLE_SSO_COOKIE,
    OIDC_PATH,
    bind_state_to_browser,
    state_bound_to_browser,
)
from fleetkeeper.access.oidc import OidcError, sign_in_with_provider
from fleetkeeper.access.principal import Principal
from fleetkeeper.console.context import ConsoleContext, console_context
from fleetkeeper.console.render import render
from fleetkeeper.console.session import (
    PRE_SESSION_COOKIE,
    check_csrf,
    clear_session_cookie,
    current_principal,
    issue_console_token,
    page,
    set_session_cookie,
)
from fleetkeeper.core.errors import ProblemError, UnauthenticatedError
from fleetkeeper.core.ratelimit import RateLimitedError

router = APIRouter(include_in_schema=False)


def safe_next(value: str | None) -> str:
    """Only a path on this site after signing in: never another host (`//evil`, `/\\evil`, and
    `/<tab>/evil`, which browsers read as `//evil` once they drop tabs and line breaks)."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(character < " " or character == "\x7f" for character in value)
    ):
        return "/"
    return value


def _sign_in_page(
    request: Request, next_path: str, *, error: str = "", username: str = "", status: int = 200
) -> Response:
    pre_session = request.cookies.get(PRE_SESSION_COOKIE) or secrets.token_urlsafe(24)
    request.state.pre_session = pre_session  # rendered into the form as its CSRF token
    response = render(
        request,
        "sign_in.html",
        None,
        status=status,
        next_path=next_path,
        error=error,
        username=username,
        sso_enabled=console_context(request).oidc.enabled,
    )
    response.set_cookie(
        PRE_SESSION_COOKIE,
        pre_session,
        max_age=3600,
        path="/sign-in",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/sign-in", dependencies=[PUBLIC])
async def sign_in_form(
    request: Request, next: Annotated[str | None, Query(max_length=2000)] = None
) -> Response:
    if await current_principal(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _sign_in_page(request, safe_next(next))


@router.post("/sign-in", dependencies=[PUBLIC])
async def sign_in(
    request: Request,
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1024)],
    totp_code: Annotated[str, Form(max_length=64)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    await check_csrf(request, request.cookies.get(PRE_SESSION_COOKIE, ""))
    runtime = console_context(request)
    flow = signin.SignIn(runtime.database, runtime.keyring, runtime.rate_limiter, runtime.settings)
    code = totp_code.replace(" ", "").strip()
    credentials = signin.Credentials(
        username,
        password,
        totp_code=code if code.isdigit() else None,
        recovery_code=code if code and not code.isdigit() else None,
    )
    client = signin.Client(client_address(request), request.headers.get("user-agent"))
    try:
        pair = await flow.sign_in(credentials, client)
    except RateLimitedError as exc:
        return _sign_in_page(request, safe_next(next), error=exc.detail or "", username=username, status=429)
    except UnauthenticatedError as exc:
        message = {
            "second_factor_required": "This account uses two-factor sign-in: enter the code from your "
            "authenticator app (or a recovery code) with your password.",
            "invalid_second_factor": "The two-factor code is wrong or was already used.",
        }.get(exc.code, "The username or password is wrong.")
        return _sign_in_page(request, safe_next(next), error=message, username=username, status=401)
    user_id = (await runtime.keyring.verify_access_token(pair.access_token)).user_id
    token = await issue_console_token(request, pair, user_id)
    response = RedirectResponse("/account/setup" if pair.pending else safe_next(next), status_code=303)
    set_session_cookie(response, request, token)
    response.delete_cookie(PRE_SESSION_COOKIE, path="/sign-in")
    return response


@router.post("/sign-out")
async def sign_out(request: Request, principal: Annotated[Principal, page(allow_pending=True)]) -> Response:
    if principal.session_id:
        await signin.end_session(console_context(request).database, principal, principal.session_id)
    response = RedirectResponse("/sign-in", status_code=303)
    clear_session_cookie(response)
    return response


# --- single sign-on -----------------------------------------------------------------------------
# The provider has one registered callback, the API's. A sign-in started here leaves a cookie for
# that callback, which hands the code on to /sign-in/sso/callback; the console session starts there.
SSO_PATH = "/sign-in/sso"
SSO_STATE_COOKIE = "fleetkeeper_console_sso_state"
SSO_NEXT_COOKIE = "fleetkeeper_console_sso_next"


def _sso_runtime(request: Request) -> ConsoleContext:
    runtime = console_context(request)
    if not runtime.oidc.enabled:
        raise ProblemError(
            "single sign-on is not configured on this server", code="oidc_not_configured", status=404
        )
    return runtime


@router.get(SSO_PATH, dependencies=[PUBLIC])
async def sso_start(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    runtime = _sso_runtime(request)
    url, state = await runtime.oidc.authorization_url(runtime.database)
    response = RedirectResponse(url, status_code=302)
    bind_state_to_browser(response, request, CONSOLE_SSO_COOKIE, state, path=OIDC_PATH)
    bind_state_to_browser(response, request, SSO_STATE_COOKIE, state, path=SSO_PATH)
    response.set_cookie(
        SSO_NEXT_COOKIE,
        quote(safe_next(next), safe="/?=&"),
        max_age=600,
        path=SSO_PATH,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.get(CONSOLE_SSO_CALLBACK, dependencies=[PUBLIC])
async def sso_callback(
    request: Request,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=128)] = None,
    error: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    runtime = _sso_runtime(request)
    if error or not code or not state:
        raise OidcError(f"the identity provider did not sign you in: {error or 'no code'}")
    if not state_bound_to_browser(request, SSO_STATE_COOKIE, state):
        raise OidcError("this sign-in was started in another browser: start again here")
    flow = signin.SignIn(runtime.database, runtime.keyring, runtime.rate_limiter, runtime.settings)
    client = signin.Client(client_address(request), request.headers.get("user-agent"))
    pair = await sign_in_with_provider(runtime.database, runtime.oidc, flow, code, state, client)
    user_id = (await runtime.keyring.verify_access_token(pair.access_token)).user_id
    token = await issue_console_token(request, pair, user_id)
    onward = (
        "/account/setup" if pair.pending else safe_next(unquote(request.cookies.get(SSO_NEXT_COOKIE, "/")))
    )
    # A page, not a redirect: the browser arrived from the provider's site, and would not send the
    # session cookie (SameSite=Strict) along a redirect that continues that navigation.
    response = render(request, "sso_done.html", None, onward=onward)
    set_session_cookie(response, request, token)
    response.delete_cookie(SSO_STATE_COOKIE, path=SSO_PATH)
    response.delete_cookie(SSO_NEXT_COOKIE, path=SSO_PATH)
    return response

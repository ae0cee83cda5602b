"""Routes for signing in and for the caller's own account."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from fleetkeeper.access import apitokens, signin, twofactor
from fleetkeeper.access.auth import PUBLIC, client_address, in_session, requires, signed_in
from fleetkeeper.access.context import access_context
from fleetkeeper.access.oidc import OidcError, sign_in_with_provider
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.schemas import (
    ApiTokenOut,
    ChangePasswordRequest,
    ConfirmTotpRequest,
    CreateApiTokenRequest,
    CreatedApiToken,
    DisableTotpRequest,
    MeOut,
    OidcStatus,
    RecoveryCodes,
    RefreshRequest,
    SessionOut,
    SigningKeyRotated,
    SignInRequest,
    TokenResponse,
    TotpCode,
    TotpEnrollment,
    UserOut,
)
from fleetkeeper.access.service import change_own_password, get_user, user_role_names
from fleetkeeper.access.tokens import hash_secret, rotate_signing_key, secret_matches
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.queries import ANY_QUERY

auth_router = APIRouter(prefix="/api/v1/auth", tags=["sign-in"])
me_router = APIRouter(prefix="/api/v1/me", tags=["my account"])

MeMaybePending = Annotated[Principal, signed_in(allow_pending=True)]
# Changes to the account itself (and what shows its credentials) need its owner signed in: an
# API token, however narrow, would otherwise become a way to take the account over.
MySession = Annotated[Principal, in_session()]
MySessionMaybePending = Annotated[Principal, in_session(allow_pending=True)]


def _sign_in_flow(request: Request) -> signin.SignIn:
    runtime = access_context(request)
    return signin.SignIn(runtime.database, runtime.keyring, runtime.rate_limiter, runtime.settings)


def _client(request: Request) -> signin.Client:
    return signin.Client(client_address(request), request.headers.get("user-agent"))


OIDC_STATE_COOKIE = "fleetkeeper_oidc_state"
OIDC_PATH = "/api/v1/auth/oidc"
# A sign-in the web console started: the provider returns to the one registered callback (here),
# which hands the code on to the console's own callback, where the console session begins.
CONSOLE_SSO_COOKIE = "fleetkeeper_oidc_console"
CONSOLE_SSO_CALLBACK = "/sign-in/sso/callback"


def bind_state_to_browser(response: Response, request: Request, name: str, state: str, *, path: str) -> None:
    """Binds a sign-in to this browser: a code and state replayed or planted elsewhere lack the cookie.
    Lax, not Strict: the provider's redirect back is a top-level cross-site navigation."""
    response.set_cookie(
        name,
        hash_secret(state),
        max_age=600,
        path=path,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def state_bound_to_browser(request: Request, name: str, state: str | None) -> bool:
    return bool(state) and secret_matches(state or "", request.cookies.get(name, ""))


SIGN_IN_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "The credentials (or the second factor, or the refresh token) are not valid"},
    429: {"description": "Too many failures: wait for `Retry-After` seconds"},
}
SSO_OFF: dict[int | str, dict[str, Any]] = {404: {"description": "Single sign-on is not configured"}}


def _sso_not_configured() -> ProblemError:
    return ProblemError(
        "single sign-on is not configured on this server", code="oidc_not_configured", status=404
    )


def token_response(pair: signin.TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        expires_in=max(0, pair.access_expires_at - int(time.time())),
        refresh_token=pair.refresh_token,
        session_id=pair.session_id,
        pending_actions=pair.pending,
    )


@auth_router.post("/sign-in", dependencies=[PUBLIC], responses=SIGN_IN_REFUSALS)
async def sign_in(body: SignInRequest, request: Request) -> TokenResponse:
    """Username and password, plus a TOTP or recovery code when the account has two-factor sign-in."""
    credentials = signin.Credentials(body.username, body.password, body.totp_code, body.recovery_code)
    return token_response(await _sign_in_flow(request).sign_in(credentials, _client(request)))


@auth_router.post("/refresh", dependencies=[PUBLIC], responses=SIGN_IN_REFUSALS)
async def refresh(body: RefreshRequest, request: Request) -> TokenResponse:
    """A new access token and a new refresh token; the one sent is used up."""
    return token_response(await _sign_in_flow(request).refresh(body.refresh_token, _client(request)))


@auth_router.post("/sign-out", status_code=204)
async def sign_out(principal: MeMaybePending, request: Request) -> Response:
    """Ends the session of this access token (its refresh tokens stop working)."""
    if principal.session_id:
        await signin.end_session(access_context(request).database, principal, principal.session_id)
    return Response(status_code=204)


@auth_router.get("/jwks", dependencies=[PUBLIC])
async def jwks(request: Request) -> dict[str, Any]:
    """The public keys that verify access tokens."""
    return await access_context(request).keyring.public_jwks()


@auth_router.post("/signing-keys/rotate")
async def rotate_keys(
    principal: Annotated[Principal, requires(Permission.USERS_MANAGE)], request: Request
) -> SigningKeyRotated:
    """A new key signs access tokens from now on; those the old key signed stay valid until they expire."""
    runtime = access_context(request)
    kid = await rotate_signing_key(runtime.database, principal.actor)
    runtime.keyring.forget()
    return SigningKeyRotated(kid=kid)


@auth_router.get("/oidc", dependencies=[PUBLIC])
async def oidc_status(request: Request) -> OidcStatus:
    """Whether single sign-on is configured, and where it starts."""
    enabled = access_context(request).oidc.enabled
    return OidcStatus(enabled=enabled, login_url="/api/v1/auth/oidc/login" if enabled else None)


@auth_router.get("/oidc/login", dependencies=[PUBLIC], status_code=302, responses=SSO_OFF)
async def oidc_login(request: Request) -> RedirectResponse:
    """Sends the browser to the identity provider (authorization code with PKCE)."""
    runtime = access_context(request)
    if not runtime.oidc.enabled:
        raise _sso_not_configured()
    url, state = await runtime.oidc.authorization_url(runtime.database)
    response = RedirectResponse(url, status_code=302)
    bind_state_to_browser(response, request, OIDC_STATE_COOKIE, state, path=OIDC_PATH)
    return response


@auth_router.get(
    "/oidc/callback",
    dependencies=[PUBLIC, ANY_QUERY],
    response_model=TokenResponse,
    responses={
        **SSO_OFF,
        **SIGN_IN_REFUSALS,
        303: {"description": "A sign-in the console started: on to the console's callback"},
    },
)
async def oidc_callback(
    request: Request,
    response: Response,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=128)] = None,
    error: Annotated[str | None, Query(max_length=128)] = None,
) -> TokenResponse | Response:
    """Where the identity provider returns; answers with tokens like a password sign-in, or, for a
    sign-in the web console started, sends the browser on to the console's callback."""
    runtime = access_context(request)
    if not runtime.oidc.enabled:
        raise _sso_not_configured()
    if state_bound_to_browser(request, CONSOLE_SSO_COOKIE, state):
        onward = RedirectResponse(f"{CONSOLE_SSO_CALLBACK}?{request.url.query}", status_code=303)
        onward.delete_cookie(CONSOLE_SSO_COOKIE, path=OIDC_PATH)
        return onward
    if error or not code or not state:
        raise OidcError(f"the identity provider did not sign you in: {error or 'no code'}")
    if not state_bound_to_browser(request, OIDC_STATE_COOKIE, state):
        raise OidcError("this sign-in was started in another browser: start again here")
    pair = await sign_in_with_provider(
        runtime.database, runtime.oidc, _sign_in_flow(request), code, state, _client(request)
    )
    response.delete_cookie(OIDC_STATE_COOKIE, path=OIDC_PATH)
    return token_response(pair)


@me_router.get("")
async def me(principal: MeMaybePending, request: Request) -> MeOut:
    """Who I am, what I may do, and what I must do first."""
    async with access_context(request).database.session() as session:
        user = await get_user(session, principal.user_id)
        roles = await user_role_names(session, user.id)
    return MeOut(
        user=UserOut.from_row(user, roles=roles),
        permissions=principal.grants.to_json(),
        pending_actions=list(principal.pending),
        auth_method=principal.method,
    )


@me_router.post("/password", status_code=204)
async def change_password(
    body: ChangePasswordRequest, principal: MySessionMaybePending, request: Request
) -> Response:
    """Changes my password (and a one-time password at first sign-in). Refresh afterwards for a full token."""
    runtime = access_context(request)
    await change_own_password(
        runtime.database, runtime.rate_limiter, principal, body.current_password, body.new_password
    )
    return Response(status_code=204)


@me_router.get("/sessions")
async def my_sessions(principal: MySession, request: Request) -> list[SessionOut]:
    async with access_context(request).database.session() as session:
        rows = await signin.list_sessions(session, principal.user_id)
    return [SessionOut.from_row(row, current=row.id == principal.session_id) for row in rows]


@me_router.delete("/sessions/{session_id}", status_code=204)
async def end_my_session(session_id: str, principal: MySession, request: Request) -> Response:
    await signin.end_session(access_context(request).database, principal, session_id)
    return Response(status_code=204)


@me_router.delete("/sessions", status_code=204)
async def end_all_my_sessions(principal: MySession, request: Request) -> Response:
    """Signs me out everywhere, this session included."""
    await signin.end_all_sessions(access_context(request).database, principal, principal.user_id)
    return Response(status_code=204)


@me_router.post("/2fa/totp")
async def start_totp(principal: MySessionMaybePending, request: Request) -> TotpEnrollment:
    """A new TOTP secret to put into an authenticator app; confirm it with a code."""
    enrollment = await twofactor.start_enrollment(access_context(request).database, principal)
    return TotpEnrollment(secret=enrollment.secret, otpauth_uri=enrollment.otpauth_uri)


@me_router.post("/2fa/totp/confirm")
async def confirm_totp(
    body: ConfirmTotpRequest, principal: MySessionMaybePending, request: Request
) -> RecoveryCodes:
    """Turns two-factor sign-in on and returns ten single-use recovery codes. Needs the current
    password, unless this session began less than 10 minutes ago."""
    runtime = access_context(request)
    codes = await twofactor.confirm_enrollment(
        runtime.database, runtime.rate_limiter, principal, body.code, body.password
    )
    return RecoveryCodes(recovery_codes=codes)


@me_router.post("/2fa/totp/disable", status_code=204)
async def disable_totp(body: DisableTotpRequest, principal: MySession, request: Request) -> Response:
    runtime = access_context(request)
    await twofactor.disable(runtime.database, runtime.rate_limiter, principal, body.password, body.code)
    return Response(status_code=204)


@me_router.post("/2fa/recovery-codes")
async def new_recovery_codes(body: TotpCode, principal: MySession, request: Request) -> RecoveryCodes:
    """Replaces all recovery codes; needs a current TOTP code."""
    runtime = access_context(request)
    codes = await twofactor.regenerate_recovery_codes(
        runtime.database, runtime.rate_limiter, principal, body.code
    )
    return RecoveryCodes(recovery_codes=codes)


@me_router.get("/tokens")
async def my_tokens(principal: MySession, request: Request) -> list[ApiTokenOut]:
    async with access_context(request).database.session() as session:
        return [
            ApiTokenOut.model_validate(token)
            for token in await apitokens.list_for(session, principal.user_id)
        ]


@me_router.post("/tokens", status_code=201)
async def create_token(
    body: CreateApiTokenRequest, principal: MySession, request: Request
) -> CreatedApiToken:
    """A personal API token, its secret shown only here. Needs the current password, unless this
    session began less than 10 minutes ago."""
    runtime = access_context(request)
    grants = None if body.grants is None else [grant.model_dump(mode="json") for grant in body.grants]
    token, secret = await apitokens.create(
        runtime.database,
        runtime.rate_limiter,
        principal,
        name=body.name,
        expires_in=timedelta(days=body.expires_in_days),
        grants=grants,
        password=body.password,
    )
    return CreatedApiToken(token=ApiTokenOut.model_validate(token), secret=secret)


@me_router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: str, principal: MySession, request: Request) -> Response:
    await apitokens.revoke(access_context(request).database, principal, token_id)
    return Response(status_code=204)

"""The signed-in user's own account: finishing setup (the first-login password change and a
required 2FA enrolment), and My account (password, two-factor sign-in, API tokens, sessions)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from fleetkeeper.access import apitokens, reauth, signin, twofactor
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.service import change_own_password, get_user, user_role_names
from fleetkeeper.console.context import console_context
from fleetkeeper.console.forms import field, grants_from_form, scope_text
from fleetkeeper.console.render import render
from fleetkeeper.console.session import clear_session_cookie, page
from fleetkeeper.core.errors import ProblemError

router = APIRouter(include_in_schema=False)
SetupUser = Annotated[Principal, page(allow_pending=True)]


@router.get("/account/setup")
async def setup(request: Request, principal: SetupUser) -> Response:
    if not principal.pending:
        return RedirectResponse("/", status_code=303)
    enrollment = None
    if principal.pending[0] == "enroll_2fa":
        enrollment = await twofactor.start_enrollment(console_context(request).database, principal)
    return render(
        request,
        "account_setup.html",
        principal,
        step=principal.pending[0],
        enrollment=enrollment,
        ask_password=await _asks_password(request, principal),
        error="",
    )


@router.post("/account/setup/password")
async def setup_password(
    request: Request,
    principal: SetupUser,
    current_password: Annotated[str, Form(max_length=1024)],
    new_password: Annotated[str, Form(max_length=1024)],
    repeat_password: Annotated[str, Form(max_length=1024)],
) -> Response:
    error = ""
    if new_password != repeat_password:
        error = "The two new passwords differ."
    else:
        try:
            runtime = console_context(request)
            await change_own_password(
                runtime.database, runtime.rate_limiter, principal, current_password, new_password
            )
        except ProblemError as exc:
            error = exc.detail or exc.code
    if error:
        return render(
            request,
            "account_setup.html",
            principal,
            step="change_password",
            enrollment=None,
            error=error,
            status=422,
        )
    return RedirectResponse("/account/setup", status_code=303)


@router.post("/account/setup/2fa")
async def setup_second_factor(
    request: Request,
    principal: SetupUser,
    code: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    async def retry(enrollment: twofactor.Enrollment, error: str) -> Response:
        return render(
            request,
            "account_setup.html",
            principal,
            step="enroll_2fa",
            enrollment=enrollment,
            ask_password=await _asks_password(request, principal),
            error=error,
            status=422,
        )

    return await _confirm_second_factor(request, principal, code, password, retry, back="/")


async def _asks_password(request: Request, principal: Principal) -> bool:
    """Turning 2FA on and creating an API token need the password once the sign-in is no longer
    recent (`reauth`); an SSO account has none here, and is told to sign in again instead."""
    if principal.method != "password":
        return False
    async with console_context(request).database.session() as session:
        return not await reauth.signed_in_recently(session, principal)


async def _confirm_second_factor(
    request: Request,
    principal: Principal,
    code: str,
    password: str,
    retry: Callable[[twofactor.Enrollment, str], Awaitable[Response]],
    *,
    back: str,
) -> Response:
    """Turns 2FA on and shows the recovery codes once; a wrong code shows a new key to try again."""
    runtime = console_context(request)
    try:
        recovery_codes = await twofactor.confirm_enrollment(
            runtime.database, runtime.rate_limiter, principal, code.strip(), password or None
        )
    except ProblemError as exc:
        enrollment = await twofactor.start_enrollment(runtime.database, principal)
        return await retry(enrollment, exc.detail or exc.code)
    return render(request, "recovery_codes.html", principal, recovery_codes=recovery_codes, back=back)


# --- My account -------------------------------------------------------------------------------

Me = Annotated[Principal, page()]
NOTICES = {
    "password": "Your password is changed. Your other sessions were ended.",
    "2fa-off": "Two-factor sign-in is off.",
    "token-revoked": "The token is revoked.",
    "session-ended": "The session is ended.",
}


async def _account_page(
    request: Request, principal: Principal, *, error: str = "", notice: str = "", status: int = 200
) -> Response:
    async with console_context(request).database.session() as session:
        user = await get_user(session, principal.user_id)
        roles = await user_role_names(session, user.id)
        tokens = await apitokens.list_for(session, user.id)
        sessions = await signin.list_sessions(session, user.id)
    held = [
        (permission, True, scope_text(sorted(principal.grants.scopes(permission) or [])))
        for permission in Permission
        if principal.can(permission)
    ]
    return render(
        request,
        "account/index.html",
        principal,
        user=user,
        roles=roles,
        tokens=tokens,
        sessions=sessions,
        grant_rows=held,
        ask_password=await _asks_password(request, principal),
        error=error,
        notice=notice or NOTICES.get(request.query_params.get("done", ""), ""),
        status=status,
    )


def _back(done: str) -> Response:
    return RedirectResponse(f"/account?done={done}", status_code=303)


@router.get("/account")
async def account(request: Request, principal: Me) -> Response:
    return await _account_page(request, principal)


@router.post("/account/password")
async def change_password(
    request: Request,
    principal: Me,
    current_password: Annotated[str, Form(max_length=1024)],
    new_password: Annotated[str, Form(max_length=1024)],
    repeat_password: Annotated[str, Form(max_length=1024)],
) -> Response:
    if new_password != repeat_password:
        return await _account_page(request, principal, error="The two new passwords differ.", status=422)
    try:
        runtime = console_context(request)
        await change_own_password(
            runtime.database, runtime.rate_limiter, principal, current_password, new_password
        )
    except ProblemError as exc:
        return await _account_page(request, principal, error=exc.detail or exc.code, status=exc.status)
    return _back("password")


@router.post("/account/2fa/start")
async def start_two_factor(request: Request, principal: Me) -> Response:
    enrollment = await twofactor.start_enrollment(console_context(request).database, principal)
    return render(
        request,
        "account/enroll.html",
        principal,
        enrollment=enrollment,
        ask_password=await _asks_password(request, principal),
        error="",
    )


@router.post("/account/2fa/confirm")
async def confirm_two_factor(
    request: Request,
    principal: Me,
    code: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    async def retry(enrollment: twofactor.Enrollment, error: str) -> Response:
        return render(
            request,
            "account/enroll.html",
            principal,
            enrollment=enrollment,
            ask_password=await _asks_password(request, principal),
            error=error,
            status=422,
        )

    return await _confirm_second_factor(request, principal, code, password, retry, back="/account")


@router.post("/account/2fa/disable")
async def disable_two_factor(
    request: Request,
    principal: Me,
    password: Annotated[str, Form(max_length=1024)],
    code: Annotated[str, Form(max_length=32)],
) -> Response:
    try:
        runtime = console_context(request)
        await twofactor.disable(runtime.database, runtime.rate_limiter, principal, password, code.strip())
    except ProblemError as exc:
        return await _account_page(request, principal, error=exc.detail or exc.code, status=exc.status)
    return _back("2fa-off")


@router.post("/account/2fa/recovery-codes")
async def new_recovery_codes(
    request: Request, principal: Me, code: Annotated[str, Form(max_length=16)]
) -> Response:
    try:
        runtime = console_context(request)
        codes = await twofactor.regenerate_recovery_codes(
            runtime.database, runtime.rate_limiter, principal, code.strip()
        )
    except ProblemError as exc:
        return await _account_page(request, principal, error=exc.detail or exc.code, status=exc.status)
    return render(
        request,
        "recovery_codes.html",
        principal,
        recovery_codes=codes,
        back="/account",
        codes_title="New recovery codes",
    )


@router.post("/account/tokens")
async def create_token(request: Request, principal: Me) -> Response:
    form = await request.form()
    try:
        days = int(field(form, "expires_in_days", 8) or "90")
    except ValueError:
        days = 0
    runtime = console_context(request)
    try:
        token, secret = await apitokens.create(
            runtime.database,
            runtime.rate_limiter,
            principal,
            name=field(form, "name", 100).strip(),
            expires_in=timedelta(days=days),
            grants=grants_from_form(form) if field(form, "narrow") == "yes" else None,
            password=field(form, "password", 1024) or None,
        )
    except ProblemError as exc:
        return await _account_page(request, principal, error=exc.detail or exc.code, status=exc.status)
    return render(request, "account/token_created.html", principal, token=token, secret=secret)


@router.post("/account/tokens/{token_id}/revoke")
async def revoke_token(request: Request, principal: Me, token_id: str) -> Response:
    await apitokens.revoke(console_context(request).database, principal, token_id)
    return _back("token-revoked")


@router.post("/account/sessions/{session_id}/end")
async def end_session(request: Request, principal: Me, session_id: str) -> Response:
    await signin.end_session(console_context(request).database, principal, session_id)
    if session_id == principal.session_id:
        return _signed_out()
    return _back("session-ended")


@router.post("/account/sessions/end-all")
async def end_all_sessions(request: Request, principal: Me) -> Response:
    await signin.end_all_sessions(console_context(request).database, principal, principal.user_id)
    return _signed_out()


def _signed_out() -> Response:
    response = RedirectResponse("/sign-in", status_code=303)
    clear_session_cookie(response)
    return response

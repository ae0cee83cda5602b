"""Finishing account setup: the first-login password change and a required 2FA enrolment."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from fleetkeeper.access import twofactor
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.service import change_own_password
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page, reissue_after_account_change
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.runtime import runtime_of

router = APIRouter(include_in_schema=False)
SetupUser = Annotated[Principal, page(allow_pending=True)]


@router.get("/account/setup")
async def setup(request: Request, principal: SetupUser) -> Response:
    if not principal.pending:
        return RedirectResponse("/", status_code=303)
    enrollment = None
    if principal.pending[0] == "enroll_2fa":
        enrollment = await twofactor.start_enrollment(runtime_of(request).database, principal)
    return render(
        request, "account_setup.html", principal, step=principal.pending[0], enrollment=enrollment, error=""
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
            await change_own_password(runtime_of(request).database, principal, current_password, new_password)
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
    response = RedirectResponse("/account/setup", status_code=303)
    await reissue_after_account_change(request, response)
    return response


@router.post("/account/setup/2fa")
async def setup_second_factor(
    request: Request, principal: SetupUser, code: Annotated[str, Form(max_length=16)]
) -> Response:
    database = runtime_of(request).database
    try:
        recovery_codes = await twofactor.confirm_enrollment(database, principal, code.strip())
    except ProblemError as exc:
        enrollment = await twofactor.start_enrollment(database, principal)
        return render(
            request,
            "account_setup.html",
            principal,
            step="enroll_2fa",
            enrollment=enrollment,
            error=exc.detail or exc.code,
            status=422,
        )
    response = render(request, "recovery_codes.html", principal, recovery_codes=recovery_codes)
    await reissue_after_account_change(request, response)
    return response

"""The console as an application mounted at `/` of the management listener, beside the API.

It has its own error pages (HTML, or a fragment for htmx) and security headers; the API keeps its
JSON problems because the console mount never matches API paths.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.types import Scope

from fleetkeeper.console.assets import own_static, vendor_file
from fleetkeeper.console.context import ConsoleContext
from fleetkeeper.console.headers import SecurityHeaders
from fleetkeeper.console.render import is_htmx, render
from fleetkeeper.console.session import (
    PendingActionError,
    SessionRenewal,
    SignInRequiredError,
    current_principal,
)
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.metrics import NO_TELEMETRY

# Paths that belong to the API and the operations endpoints, never to the console.
NOT_CONSOLE = ("/api/", "/api", "/healthz", "/readyz", "/metrics")


def console_routers() -> list[APIRouter]:
    from fleetkeeper.console.pages import (
        account,
        audit,
        auth,
        dashboard,
        deployments,
        devices,
        enrollment,
        releases,
        terminal,
        users,
    )

    return [
        auth.router,
        account.router,
        dashboard.router,
        terminal.router,
        releases.router,
        deployments.router,
        audit.router,
        users.router,
        devices.router,
        enrollment.router,
    ]


class ConsoleMount(Mount):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in NOT_CONSOLE):
            return Match.NONE, {}
        return super().matches(scope)


def _redirect(request: Request, location: str) -> Response:
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    if isinstance(exc, SignInRequiredError):
        return _redirect(request, f"/sign-in?next={exc.next_path}")
    if isinstance(exc, PendingActionError):
        return _redirect(request, "/account/setup")
    principal = await current_principal(request)
    return render(
        request, "error.html", principal, status=exc.status, title=exc.code, detail=exc.detail or ""
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    principal = await current_principal(request)
    detail = exc.detail if isinstance(exc.detail, str) else "error"
    if exc.status_code == 404:
        detail = "there is no such page"
    return render(request, "error.html", principal, status=exc.status_code, title="error", detail=detail)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = sorted({str(error.get("loc", ("", ""))[-1]) for error in exc.errors()})
    principal = await current_principal(request)
    detail = "please check these fields: " + ", ".join(fields)
    return render(request, "error.html", principal, status=422, title="invalid input", detail=detail)


def create_console_app(runtime: ConsoleContext) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, telemetry=NO_TELEMETRY)
    app.state.runtime = runtime
    app.state.routers = console_routers()
    for router in app.state.routers:
        app.include_router(router)
    app.router.routes.append(Route("/static/vendor/{name}", vendor_file, methods=["GET", "HEAD"]))
    app.mount("/static", own_static, name="static")
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_middleware(SessionRenewal)
    app.add_middleware(SecurityHeaders)
    return app


def mount_console(app: FastAPI, runtime: ConsoleContext) -> None:
    app.router.routes.append(ConsoleMount("/", app=create_console_app(runtime)))

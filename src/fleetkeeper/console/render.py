"""Rendering pages: one Jinja2 environment, autoescaped, with what every page needs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.console.session import csrf_token

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str
    permission: Permission | None = None


NAVIGATION = (
    NavItem("Dashboard", "/"),
    NavItem("Devices", "/devices", Permission.DEVICES_READ),
    NavItem("Enrollment", "/enrollment", Permission.DEVICES_MANAGE),
    NavItem("Releases", "/releases", Permission.RELEASES_READ),
    NavItem("Deployments", "/deployments", Permission.DEVICES_READ),
    NavItem("Audit log", "/audit", Permission.AUDIT_READ),
    NavItem("Users and roles", "/users", Permission.USERS_MANAGE),
)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["time"] = _time
    environment.globals["Permission"] = Permission
    return environment


ENVIRONMENT = _environment()


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    template: str,
    principal: Principal | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A whole page, or only its fragment when htmx asks (templates check `partial`)."""
    navigation = [
        item
        for item in NAVIGATION
        if principal is not None
        and not principal.pending
        and (item.permission is None or principal.can(item.permission))
    ]
    html = ENVIRONMENT.get_template(template).render(
        request=request,
        principal=principal,
        can=(lambda permission: principal is not None and principal.can(permission)),
        csrf_token=csrf_token(request),
        navigation=navigation,
        current_path=request.url.path,
        partial=is_htmx(request),
        layout="fragment.html" if is_htmx(request) else "base.html",
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=headers)

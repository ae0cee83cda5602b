"""The dashboard: the fleet at a glance, refreshed by htmx from a fragment route. Each section is
computed only for a user holding the permission it needs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.audit.service import recent_security_events
from fleetkeeper.console.context import console_context
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page
from fleetkeeper.deployments import statistics as deployments
from fleetkeeper.deployments import visibility
from fleetkeeper.devices import service as devices

router = APIRouter(include_in_schema=False)
SignedIn = Annotated[Principal, page()]
REFRESH_SECONDS = 5


async def _sections(request: Request, principal: Principal) -> dict[str, Any]:
    sections: dict[str, Any] = {"counts": None, "health": None, "under_way": None, "security_events": None}
    async with console_context(request).database.session() as session:
        if principal.can(Permission.DEVICES_READ):
            sections["counts"] = await devices.status_counts(session, principal)
            sections["health"] = await deployments.recent_fleet_health(session, principal)
            sections["under_way"] = [
                (view.deployment, view.statistics) for view in await visibility.under_way(session, principal)
            ]
        if principal.can(Permission.AUDIT_READ):
            sections["security_events"] = await recent_security_events(session)
    return sections


@router.get("/")
async def dashboard(request: Request, principal: SignedIn) -> Response:
    sections = await _sections(request, principal)
    return render(request, "dashboard.html", principal, refresh_seconds=REFRESH_SECONDS, **sections)


@router.get("/dashboard/live")
async def dashboard_live(request: Request, principal: SignedIn) -> Response:
    """The sections alone, for the page's periodic refresh."""
    sections = await _sections(request, principal)
    return render(request, "dashboard/sections.html", principal, **sections)

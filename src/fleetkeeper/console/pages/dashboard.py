"""The dashboard: the fleet at a glance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetkeeper.access.principal import Principal
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page

router = APIRouter(include_in_schema=False)


@router.get("/")
async def dashboard(request: Request, principal: Annotated[Principal, page()]) -> Response:
    return render(request, "dashboard.html", principal)

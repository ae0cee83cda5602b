"""A terminal on a device in the browser: xterm.js on the terminal WebSocket (docs/terminal.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from starlette.responses import Response

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.console.context import console_context
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page
from fleetkeeper.devices.service import get_permitted_device

router = APIRouter(include_in_schema=False)


@router.get("/devices/{device_id}/terminal")
async def terminal(
    device_id: str, request: Request, principal: Annotated[Principal, page(Permission.DEVICES_CONNECT)]
) -> Response:
    async with console_context(request).database.session() as session:
        device = await get_permitted_device(session, principal, device_id, Permission.DEVICES_CONNECT)
    return render(request, "terminal.html", principal, device=device)

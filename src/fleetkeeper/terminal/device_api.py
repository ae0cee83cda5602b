"""The device's control channel: `GET /device/v1/channel`, a WebSocket the agent keeps open."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from fleetkeeper.devices.auth import AuthenticatedDevice
from fleetkeeper.terminal.channel import DeviceChannel
from fleetkeeper.terminal.context import terminal_context

router = APIRouter(prefix="/device/v1", tags=["device"])


@router.websocket("/channel")
async def channel(websocket: WebSocket, device: AuthenticatedDevice) -> None:
    """Sessions and file transfers reach the device here (docs/terminal.md, "Protocol")."""
    await websocket.accept()
    await DeviceChannel(terminal_context(websocket), websocket, device.id).run()

"""Device listener routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket
from pydantic import BaseModel

from fleetkeeper.core.peer import PeerCertificate, require_peer_certificate

router = APIRouter(prefix="/device/v1", tags=["device"])


class Identity(BaseModel):
    subject: str
    common_name: str
    serial_number: str
    fingerprint_sha256: str


def _identity(peer: PeerCertificate) -> Identity:
    return Identity(
        subject=peer.subject,
        common_name=peer.common_name,
        serial_number=format(peer.serial_number, "x"),
        fingerprint_sha256=peer.fingerprint_sha256,
    )


@router.get("/whoami")
async def whoami(peer: Annotated[PeerCertificate, Depends(require_peer_certificate)]) -> Identity:
    """The identity the server sees in this connection's client certificate."""
    return _identity(peer)


@router.websocket("/whoami")
async def whoami_ws(
    websocket: WebSocket, peer: Annotated[PeerCertificate, Depends(require_peer_certificate)]
) -> None:
    """The same over a WebSocket: one message, then a normal close. Agents use it to test their channel."""
    await websocket.accept()
    await websocket.send_json(_identity(peer).model_dump())
    await websocket.close()

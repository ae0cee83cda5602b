"""The FastAPI dependency that authenticates a device on the device listener. Other domains'
device routes use it too."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from sqlalchemy import select
from starlette.requests import HTTPConnection

from fleetkeeper.core.errors import UnauthenticatedError
from fleetkeeper.core.peer import require_peer_certificate
from fleetkeeper.core.routeaccess import AccessRule, mark
from fleetkeeper.core.runtime import runtime_of
from fleetkeeper.devices import service
from fleetkeeper.devices.models import Device, DeviceCertificate


async def _authenticated_device(connection: HTTPConnection) -> Device:
    """The device whose certificate this is: issued by us, not revoked, device accepted. The TLS
    layer checks the CA and the CRL; this check also holds before a new CRL is loaded."""
    peer = require_peer_certificate(connection)
    runtime = runtime_of(connection)
    async with runtime.database.session() as session:
        found = (
            await session.execute(
                select(Device, DeviceCertificate.revoked_at)
                .join(DeviceCertificate, DeviceCertificate.device_id == Device.id)
                .where(DeviceCertificate.serial == format(peer.serial_number, "x"))
            )
        ).one_or_none()
    if found is None or found[0].id != peer.common_name:
        raise UnauthenticatedError(
            "this certificate does not belong to a known device", code="unknown_certificate"
        )
    device, revoked_at = found
    if revoked_at is not None:
        raise UnauthenticatedError("this certificate was revoked", code="certificate_revoked")
    if device.status != "accepted":
        raise UnauthenticatedError(f"this device is {device.status}", code="device_not_accepted")
    await service.touch(runtime.database, device)
    return device


AuthenticatedDevice = Annotated[Device, Depends(mark(AccessRule("device"), _authenticated_device))]

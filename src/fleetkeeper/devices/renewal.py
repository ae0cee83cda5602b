"""The device's certificate over mTLS after enrollment: renewed with the same key, or a new key
rotated in (at once, or after an operator's approval)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from fleetkeeper.access.service import Principal
from fleetkeeper.audit.service import record
from fleetkeeper.core.errors import (
    ConflictError,
    ProblemError,
)
from fleetkeeper.devices import certificates
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.devices.envelope import (
    claim_nonce,
    key_fingerprint,
    load_public_key,
    open_envelope,
    public_pem,
)
from fleetkeeper.devices.models import Device, DeviceCertificate
from fleetkeeper.devices.service import device_actor

ROTATE_TYPE = "fleetkeeper.rotate.v1"


async def renew(runtime: DevicesContext, device: Device, address: str | None) -> DeviceCertificate:
    validity = timedelta(days=runtime.settings.device_certificate_days)
    async with runtime.database.transaction() as session:
        certificate = await certificates.issue(
            session, runtime.ca, device.id, load_public_key(device.public_key_pem), validity
        )
        await record(
            session,
            actor=device_actor(device, address),
            action="device.certificate_renewed",
            object_type="device",
            object_id=device.id,
            details={"serial": certificate.serial, "not_after": certificate.not_after.isoformat()},
        )
    return certificate


async def rotate(
    runtime: DevicesContext, device: Device, envelope: dict[str, Any], address: str | None
) -> DeviceCertificate | None:
    """A new key, proven by a request it signed. Under the "automatic" policy the new certificate
    comes back at once and the old key's certificates are revoked; under "approval" it waits."""
    signed = open_envelope(envelope, ROTATE_TYPE)
    if signed.payload.get("device_id") != device.id:
        raise ProblemError("a device rotates only its own key", code="wrong_device", status=403)
    validity = timedelta(days=runtime.settings.device_certificate_days)
    new_pem = public_pem(signed.key)
    revoked = 0
    async with runtime.database.transaction() as session:
        await claim_nonce(session, str(signed.payload["nonce"]))
        current = await session.get(Device, device.id, with_for_update=True)
        assert current is not None
        if signed.fingerprint == current.key_fingerprint:
            raise ProblemError("this is the device's current key", code="same_key", status=409)
        taken = await session.scalar(select(Device.id).where(Device.key_fingerprint == signed.fingerprint))
        if taken is not None:
            raise ConflictError("this key belongs to another device", code="device_key_taken")
        approved = current.pending_public_key_pem == new_pem and current.pending_key_approved_by is not None
        if runtime.settings.device_key_rotation == "approval" and not approved:
            if current.pending_public_key_pem != new_pem:
                current.pending_public_key_pem = new_pem
                current.pending_key_approved_by = None
                await record(
                    session,
                    actor=device_actor(current, address),
                    action="device.key_rotation_requested",
                    object_type="device",
                    object_id=current.id,
                    details={"key_fingerprint": signed.fingerprint},
                )
            return None
        current.public_key_pem = new_pem
        current.key_fingerprint = signed.fingerprint
        current.pending_public_key_pem = None
        current.pending_key_approved_by = None
        certificate = await certificates.issue(session, runtime.ca, current.id, signed.key, validity)
        revoked = await certificates.revoke_for_device(
            session, current.id, "superseded", except_key=signed.fingerprint
        )
        await record(
            session,
            actor=device_actor(current, address),
            action="device.key_rotated",
            object_type="device",
            object_id=current.id,
            details={"key_fingerprint": signed.fingerprint, "serial": certificate.serial, "revoked": revoked},
        )
    if revoked:
        await certificates.reload_crl(runtime)
    return certificate


async def approve_rotation(runtime: DevicesContext, principal: Principal, device: Device) -> None:
    async with runtime.database.transaction() as session:
        current = await session.get(Device, device.id, with_for_update=True)
        if current is None or current.pending_public_key_pem is None:
            raise ConflictError("no key rotation is waiting for this device", code="no_pending_rotation")
        current.pending_key_approved_by = principal.user_id
        await record(
            session,
            actor=principal.actor,
            action="device.key_rotation_approved",
            object_type="device",
            object_id=current.id,
            details={"key_fingerprint": key_fingerprint(load_public_key(current.pending_public_key_pem))},
        )

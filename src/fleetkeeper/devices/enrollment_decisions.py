"""Operators' decisions on devices: accept or reject an enrollment, pre-authorize a device by its key,
decommission one."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from fleetkeeper.access.service import Principal
from fleetkeeper.audit.service import record
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import (
    ConflictError,
    NotFoundError,
)
from fleetkeeper.core.runtime import Runtime
from fleetkeeper.devices import certificates
from fleetkeeper.devices.enrollment import add_device
from fleetkeeper.devices.enrollment_tokens import ensure_may_enroll_into_no_group
from fleetkeeper.devices.envelope import (
    load_public_key,
)
from fleetkeeper.devices.identity import check_identity
from fleetkeeper.devices.models import Device, GroupMember
from fleetkeeper.devices.scopes import checking_moves
from fleetkeeper.devices.service import managed_static_group, set_membership


async def decide(runtime: Runtime, principal: Principal, device: Device, accept: bool) -> Device:
    async with runtime.database.transaction() as session:
        current = await session.get(Device, device.id, with_for_update=True)
        if current is None:
            raise NotFoundError("no such device", code="device_not_found")
        if current.status != "pending":
            raise ConflictError(f"the device is {current.status}, not pending", code="not_pending")
        async with checking_moves(session, principal, current.id):  # groups that read `status`
            current.status = "accepted" if accept else "rejected"
        current.decided_at = utcnow()
        current.decided_by = principal.user_id
        await record(
            session,
            actor=principal.actor,
            action="device.accepted" if accept else "device.rejected",
            object_type="device",
            object_id=current.id,
            details={"device_type": current.device_type, "serial": current.serial},
        )
    return current


async def accept_into_group(
    runtime: Runtime, principal: Principal, device: Device, group_name: str | None
) -> Device:
    """Accepts a pending device and, when a static group is named, puts it there; the group is
    checked before the decision so that a bad group accepts nothing."""
    if group_name:
        async with runtime.database.session() as session:
            await managed_static_group(session, principal, group_name)
    accepted = await decide(runtime, principal, device, accept=True)
    if group_name:
        await set_membership(runtime.database, principal, group_name, [device.id], add=True)
    return accepted


async def preauthorize(
    runtime: Runtime, principal: Principal, raw_identity: Any, public_key_pem: str, group_names: list[str]
) -> Device:
    """Registers a device's identity and public key ahead, in these static groups: it is accepted at
    its first enrollment."""
    identity = check_identity(raw_identity)
    async with runtime.database.session() as session:
        groups = [await managed_static_group(session, principal, name) for name in dict.fromkeys(group_names)]
    if not groups:
        ensure_may_enroll_into_no_group(principal)
    key = load_public_key(public_key_pem)
    try:
        async with runtime.database.transaction() as session:
            device = await add_device(
                session,
                identity,
                key,
                status="preauthorized",
                via="preauthorized",
                decided_by=principal.user_id,
            )
            for group in groups:
                session.add(GroupMember(group_id=group.id, device_id=device.id))
            await record(
                session,
                actor=principal.actor,
                action="device.preauthorized",
                object_type="device",
                object_id=device.id,
                details={"identity": identity.as_json(), "key_fingerprint": device.key_fingerprint},
            )
    except IntegrityError:
        raise ConflictError("a device with this public key exists", code="device_key_taken") from None
    return device


async def decommission(runtime: Runtime, principal: Principal, device: Device) -> int:
    """Retires the device: its certificates are revoked and published in the CRL at once."""
    async with runtime.database.transaction() as session:
        current = await session.get(Device, device.id, with_for_update=True)
        if current is None:
            raise NotFoundError("no such device", code="device_not_found")
        if current.status == "decommissioned":
            raise ConflictError("the device is already decommissioned", code="already_decommissioned")
        async with checking_moves(session, principal, current.id):
            current.status = "decommissioned"
        revoked = await certificates.revoke_for_device(session, current.id, "cessation_of_operation")
        await record(
            session,
            actor=principal.actor,
            action="device.decommissioned",
            object_type="device",
            object_id=current.id,
            details={"certificates_revoked": revoked},
        )
    await certificates.reload_crl(runtime)
    return revoked

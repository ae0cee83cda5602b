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
from fleetkeeper.devices import certificates
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.devices.enrollment import add_device
from fleetkeeper.devices.enrollment_tokens import ensure_may_enroll_into_no_group
from fleetkeeper.devices.envelope import (
    load_public_key,
)
from fleetkeeper.devices.identity import check_identity
from fleetkeeper.devices.models import Device, GroupMember
from fleetkeeper.devices.scopes import checking_acceptance, checking_moves
from fleetkeeper.devices.service import managed_static_group


async def decide(
    runtime: DevicesContext,
    principal: Principal,
    device: Device,
    accept: bool,
    *,
    into_group: str | None = None,
) -> Device:
    """Accepts (into a static group of the caller's, when one is named) or rejects a pending device,
    in one transaction. Accepting needs devices:manage in every group that reaches the accepted
    device as a scope (scopes.checking_acceptance, the rule an auto-accepting token follows for its
    creator); rejecting, in every group it thereby leaves (checking_moves: groups that read
    `status`). The group is checked first so that a bad group decides nothing."""
    async with runtime.database.transaction() as session:
        group = await managed_static_group(session, principal, into_group) if into_group else None
        current = await session.get(Device, device.id, with_for_update=True)
        if current is None:
            raise NotFoundError("no such device", code="device_not_found")
        if current.status != "pending":
            raise ConflictError(f"the device is {current.status}, not pending", code="not_pending")
        checking = checking_acceptance(session, principal, current) if accept else None
        async with checking or checking_moves(session, principal, current.id):
            current.status = "accepted" if accept else "rejected"
            if group is not None and await session.get(GroupMember, (group.id, current.id)) is None:
                session.add(GroupMember(group_id=group.id, device_id=current.id))
        current.decided_at = utcnow()
        current.decided_by = principal.user_id
        await record(
            session,
            actor=principal.actor,
            action="device.accepted" if accept else "device.rejected",
            object_type="device",
            object_id=current.id,
            details={
                "device_type": current.device_type,
                "serial": current.serial,
                **({"group": group.name} if group is not None else {}),
            },
        )
    return current


async def accept_into_group(
    runtime: DevicesContext, principal: Principal, device: Device, group_name: str | None
) -> Device:
    """Accepts a pending device and, when a static group is named, puts it there (`decide`)."""
    return await decide(runtime, principal, device, accept=True, into_group=group_name or None)


async def preauthorize(
    runtime: DevicesContext,
    principal: Principal,
    raw_identity: Any,
    public_key_pem: str,
    group_names: list[str],
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
            # Accepted at its first contact with no one deciding then: the decision is now's.
            async with checking_acceptance(session, principal, device):
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


async def decommission(runtime: DevicesContext, principal: Principal, device: Device) -> int:
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

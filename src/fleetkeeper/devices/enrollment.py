"""Enrollment as the device asks for it: a request signed by a key made on the device, queued for an
operator or accepted at once (by a pre-authorization or a batch token), and its first certificate.
Operators' decisions live in enrollment_decisions, tokens in enrollment_tokens, renewal and key
rotation in renewal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.audit.service import Actor, record
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import (
    ProblemError,
)
from fleetkeeper.core.ids import new_id
from fleetkeeper.devices import auto_accept, certificates, enrollment_limits
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.devices.enrollment_tokens import count_use, group_names, valid_token
from fleetkeeper.devices.envelope import (
    DevicePublicKey,
    SignedPayload,
    claim_nonce,
    key_fingerprint,
    load_public_key,
    open_envelope,
    public_pem,
)
from fleetkeeper.devices.identity import Identity, check_identity, compare, registered_identity
from fleetkeeper.devices.inventory import replace_attributes
from fleetkeeper.devices.models import Device, DeviceCertificate, EnrollmentToken
from fleetkeeper.devices.service import device_actor

ENROLL_TYPE = "fleetkeeper.enroll.v1"
RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True)
class EnrollmentAnswer:
    device_id: str
    status: str  # pending | accepted
    certificate: str | None = None
    not_after: str | None = None


async def enroll(runtime: DevicesContext, envelope: dict[str, Any], address: str | None) -> EnrollmentAnswer:
    """The device's signed enrollment request. The same key always maps to the same device, so a
    device polls by sending its enrollment again."""
    await enrollment_limits.count_request(runtime, address)
    signed = open_envelope(envelope, ENROLL_TYPE)
    identity = check_identity(signed.payload.get("identity"))
    token_value = signed.payload.get("enrollment_token")
    if token_value is not None and not isinstance(token_value, str):
        raise ProblemError("enrollment_token is a string", code="invalid_request", status=400)
    try:
        return await _enroll(runtime, signed, identity, token_value, address)
    except _RefusalError as refusal:
        # The refused request's transaction is rolled back; its audit record must survive that.
        async with runtime.database.transaction() as session:
            await claim_nonce(session, str(signed.payload["nonce"]))
            await record(
                session,
                actor=refusal.actor,
                action="device.enrollment_refused",
                object_type="device",
                object_id=refusal.device_id,
                outcome="denied",
                details={"reason": refusal.problem.detail, "identity": identity.as_json()},
            )
        raise refusal.problem from None


class _RefusalError(Exception):
    """Taken out of the transaction it refuses, with what the audit record needs (the device row
    itself does not survive the rollback)."""

    def __init__(self, actor: Actor, device_id: str, problem: ProblemError) -> None:
        super().__init__(problem.detail)
        self.actor = actor
        self.device_id = device_id
        self.problem = problem


async def _enroll(
    runtime: DevicesContext,
    signed: SignedPayload,
    identity: Identity,
    token_value: str | None,
    address: str | None,
) -> EnrollmentAnswer:
    # Every enrollment queues on the audit head row from its first record until it commits, and on
    # its token's row from counting the use: both come last, after the inserts and the signing,
    # so that concurrent enrollments wait for as few statements as possible.
    audit: list[dict[str, Any]] = []
    async with runtime.database.transaction() as session:
        await claim_nonce(session, str(signed.payload["nonce"]))
        device = await session.scalar(select(Device).where(Device.key_fingerprint == signed.fingerprint))
        token = None
        new = device is None or device.status == "preauthorized"
        if device is None:
            token = await valid_token(session, token_value) if token_value else None
            if token is None:
                await enrollment_limits.ensure_queue_has_room(session, runtime.settings, address)
            device = await _new_device(session, signed, identity, token, address, audit)
        elif device.status == "preauthorized":
            await _first_contact(device, identity, address, audit)
        if device.status == "rejected":
            raise ProblemError(
                "an operator rejected this device's enrollment", code="enrollment_rejected", status=403
            )
        if device.status == "decommissioned":
            raise ProblemError("this device was decommissioned", code="device_decommissioned", status=403)
        certificate = None
        if device.status == "accepted":
            certificate = await _current_certificate(session, runtime, device, new=new, audit=audit)
        if token is not None:
            await count_use(session, token)
        for entry in audit:
            await record(session, **entry)
        if certificate is None:
            return EnrollmentAnswer(device.id, "pending")
        return EnrollmentAnswer(device.id, "accepted", certificate.pem, certificate.not_after.isoformat())


async def _new_device(
    session: AsyncSession,
    signed: SignedPayload,
    identity: Identity,
    token: EnrollmentToken | None,
    address: str | None,
    audit: list[dict[str, Any]],
) -> Device:
    device = await add_device(
        session,
        identity,
        signed.key,
        status="pending",
        via="token" if token else "request",
        token_id=token.id if token else None,
    )
    # A token's group and its auto-acceptance act for its creator: else the device waits for an operator.
    outside_group = await auto_accept.join_token_group(session, token, device) if token else None
    accepted = token is not None and token.auto_accept
    withheld = await auto_accept.withheld(session, token, device) if token and accepted else None
    if accepted and withheld is None:
        device.status, device.decided_at = "accepted", utcnow()
    audit.append(
        {
            "actor": device_actor(device, address),
            "action": "device.enrollment_requested",
            "object_type": "device",
            "object_id": device.id,
            "details": {
                "identity": identity.as_json(),
                "key_fingerprint": signed.fingerprint,
                "via": device.enrolled_via,
            },
        }
    )
    if token is not None and outside_group is not None:
        audit.append(
            {
                "actor": device_actor(device, address),
                "action": "device.token_group_withheld",
                "object_type": "device",
                "object_id": device.id,
                "details": {
                    **outside_group.as_details(token),
                    "group": (await group_names(session)).get(token.group_id or ""),
                },
            }
        )
    if token is not None and withheld is not None:
        audit.append(
            {
                "actor": device_actor(device, address),
                "action": "device.auto_accept_withheld",
                "object_type": "device",
                "object_id": device.id,
                "details": withheld.as_details(token),
            }
        )
    elif accepted and withheld is None:
        audit.append(
            {
                "actor": device_actor(device, address),
                "action": "device.accepted",
                "object_type": "device",
                "object_id": device.id,
                "details": {"by": "enrollment_token", "token_id": token.id if token else None},
            }
        )
    return device


async def add_device(
    session: AsyncSession,
    identity: Identity,
    key: DevicePublicKey,
    *,
    status: str,
    via: str,
    token_id: str | None = None,
    decided_by: str | None = None,
) -> Device:
    now = utcnow()
    device = Device(
        id=new_id("dev"),
        status=status,
        device_type=identity.device_type,
        serial=identity.serial,
        mac=identity.mac,
        identity=identity.as_json(),
        public_key_pem=public_pem(key),
        key_fingerprint=key_fingerprint(key),
        enrolled_via=via,
        enrollment_token_id=token_id,
        created_at=now,
        decided_at=None if status == "pending" else now,
        decided_by=decided_by,
        inventory={},
        tags={},
    )
    session.add(device)
    await session.flush()
    await replace_attributes(session, device.id, identity.indexed_attributes(), namespace="identity.")
    return device


async def _first_contact(
    device: Device, identity: Identity, address: str | None, audit: list[dict[str, Any]]
) -> None:
    """A pre-authorized device is accepted when it shows up with the registered key and identity,
    which stays as registered: what it claims beyond that is ignored, and named in the record."""
    comparison = compare(registered_identity(device), identity)
    if comparison.differing:
        fields = ", ".join(comparison.differing)
        raise _RefusalError(
            device_actor(device, address),
            device.id,
            ProblemError(
                f"the identity does not match this key's pre-authorization ({fields}): send the identity"
                " the operator registered, or ask them to check the pre-authorization",
                code="identity_mismatch",
                status=403,
            ),
        )
    device.status = "accepted"
    device.decided_at = utcnow()
    audit.append(
        {
            "actor": device_actor(device, address),
            "action": "device.accepted",
            "object_type": "device",
            "object_id": device.id,
            "details": {"by": "pre-authorization", "ignored_identity": list(comparison.ignored)},
        }
    )


async def _current_certificate(
    session: AsyncSession, runtime: DevicesContext, device: Device, *, new: bool, audit: list[dict[str, Any]]
) -> DeviceCertificate:
    """The newest valid certificate for the device's key, issued when there is none (a device
    accepted in this transaction has none: no need to look)."""
    if not new:
        existing = await session.scalar(
            select(DeviceCertificate)
            .where(
                DeviceCertificate.device_id == device.id,
                DeviceCertificate.key_fingerprint == device.key_fingerprint,
                DeviceCertificate.revoked_at.is_(None),
                DeviceCertificate.not_after > utcnow() + timedelta(days=1),
            )
            .order_by(DeviceCertificate.not_after.desc())
            .limit(1)
        )
        if existing is not None:
            return existing
    certificate = await certificates.issue(
        session,
        runtime.ca,
        device.id,
        load_public_key(device.public_key_pem),
        timedelta(days=runtime.settings.device_certificate_days),
    )
    audit.append(
        {
            "actor": Actor(kind="system", name="fleet CA"),
            "action": "device.certificate_issued",
            "object_type": "device",
            "object_id": device.id,
            "details": {"serial": certificate.serial, "not_after": certificate.not_after.isoformat()},
        }
    )
    return certificate

"""Enrollment: requests signed by a key made on the device, decisions by operators (or by a
pre-authorization or a batch token), certificates issued, renewed, rotated and revoked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.access.tokens import hash_secret, new_secret, secret_matches
from fleetkeeper.audit.service import Actor, record
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ProblemError,
    UnauthenticatedError,
)
from fleetkeeper.core.ids import new_id
from fleetkeeper.devices import auto_accept, certificates, enrollment_limits
from fleetkeeper.devices.context import DevicesContext
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
from fleetkeeper.devices.models import Device, DeviceCertificate, EnrollmentToken, GroupMember
from fleetkeeper.devices.scopes import checking_acceptance, checking_moves
from fleetkeeper.devices.service import device_actor, list_groups, managed_static_group

ENROLL_TYPE = "fleetkeeper.enroll.v1"
ROTATE_TYPE = "fleetkeeper.rotate.v1"
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
            token = await _valid_token(session, token_value) if token_value else None
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
            await _count_use(session, token)
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
    device = await _add_device(
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
                    "group": (await _group_names(session)).get(token.group_id or ""),
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


async def _add_device(
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


async def _valid_token(session: AsyncSession, value: str) -> EnrollmentToken:
    """The token the value names, if its secret matches and it can still be used. Not locked: the
    use is counted by `_count_use` at the end of the transaction, which checks all this again."""
    invalid = UnauthenticatedError("the enrollment token is not valid", code="invalid_enrollment_token")
    token_id, _, secret = value.partition(".")
    token = await session.get(EnrollmentToken, token_id) if token_id else None
    if token is None or not secret_matches(secret, token.token_hash):
        raise invalid
    if token.revoked_at is not None or token.expires_at <= utcnow() or token.uses >= token.max_uses:
        raise _token_spent()
    return token


async def _count_use(session: AsyncSession, token: EnrollmentToken) -> None:
    # Counted in the same statement as the checks, so that concurrent devices cannot overrun the
    # uses, nor enroll with a token revoked since `_valid_token` read it.
    used = await session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.id == token.id,
            EnrollmentToken.uses < EnrollmentToken.max_uses,
            EnrollmentToken.revoked_at.is_(None),
            EnrollmentToken.expires_at > utcnow(),
        )
        .values(uses=EnrollmentToken.uses + 1)
        .execution_options(synchronize_session=False)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise _token_spent()


def _token_spent() -> UnauthenticatedError:
    return UnauthenticatedError(
        "the enrollment token has expired, is used up or was revoked", code="invalid_enrollment_token"
    )


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


# --- operators ---------------------------------------------------------------------------------


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


def ensure_may_enroll_into_no_group(principal: Principal) -> None:
    """A device in no group is reached only by unscoped grants: enrolling one needs devices:manage
    everywhere. (Into groups: devices:manage in each, `managed_static_group`.)"""
    if principal.grants.scopes(Permission.DEVICES_MANAGE) is not None:
        raise ForbiddenError(
            "a device in no group needs devices:manage on all devices: name a group of yours",
            permission=Permission.DEVICES_MANAGE.value,
        )


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
            device = await _add_device(
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


def _token_in_scope(principal: Principal, token: EnrollmentToken, group_names: dict[str, str]) -> bool:
    """A scoped operator sees and revokes only the tokens that enrol into their groups."""
    scopes = principal.grants.scopes(Permission.DEVICES_MANAGE)
    return scopes is None or (token.group_id is not None and group_names.get(token.group_id) in scopes)


async def _group_names(session: AsyncSession) -> dict[str, str]:
    return {group.id: group.name for group in await list_groups(session)}


async def list_tokens(session: AsyncSession, principal: Principal) -> list[EnrollmentToken]:
    """The enrollment tokens the caller may see, newest first."""
    rows = (await session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.created_at.desc()))).all()
    names = await _group_names(session)
    return [row for row in rows if _token_in_scope(principal, row, names)]


async def create_token(
    runtime: DevicesContext,
    principal: Principal,
    *,
    name: str,
    expires_in: timedelta,
    max_uses: int,
    auto_accept: bool,
    group_name: str | None,
) -> tuple[EnrollmentToken, str]:
    """A batch enrollment token for factory provisioning: expiring, limited uses, optionally
    accepting its devices straight into a group. The secret is returned here only."""
    group = None
    if group_name:
        async with runtime.database.session() as session:
            group = await managed_static_group(session, principal, group_name)
    else:
        ensure_may_enroll_into_no_group(principal)
    secret = new_secret()
    async with runtime.database.transaction() as session:
        token = EnrollmentToken(
            id=new_id("etk"),
            name=name,
            token_hash=hash_secret(secret),
            created_by=principal.user_id,
            created_at=utcnow(),
            expires_at=utcnow() + expires_in,
            max_uses=max_uses,
            uses=0,
            auto_accept=auto_accept,
            group_id=group.id if group else None,
        )
        session.add(token)
        await session.flush()
        await record(
            session,
            actor=principal.actor,
            action="enrollment_token.created",
            object_type="enrollment_token",
            object_id=token.id,
            details={
                "name": name,
                "max_uses": max_uses,
                "auto_accept": auto_accept,
                "group": group.name if group else None,
                "expires_at": token.expires_at.isoformat(),
            },
        )
    return token, f"{token.id}.{secret}"


async def revoke_token(runtime: DevicesContext, principal: Principal, token_id: str) -> None:
    not_found = NotFoundError("no such enrollment token", code="enrollment_token_not_found")
    async with runtime.database.transaction() as session:
        token = await session.get(EnrollmentToken, token_id)
        if token is None or token.revoked_at is not None:
            raise not_found
        if not _token_in_scope(principal, token, await _group_names(session)):
            raise not_found
        token.revoked_at = utcnow()
        await record(
            session,
            actor=principal.actor,
            action="enrollment_token.revoked",
            object_type="enrollment_token",
            object_id=token_id,
            details={"name": token.name},
        )


# --- the device itself, over mTLS ---------------------------------------------------------------


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

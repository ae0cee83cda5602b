"""Device certificates from the fleet CA, their revocation, and the CRL that publishes it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.pki import CLOCK_SKEW, CertificateAuthority, PkiPaths, write_bytes_atomic
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.devices.envelope import DevicePublicKey, key_fingerprint
from fleetkeeper.devices.models import CrlState, DeviceCertificate

CRL_VALIDITY = timedelta(days=7)
# A CRL is published again when less than this is left, so that it never expires in use.
CRL_REFRESH_BEFORE = timedelta(days=6)
_REASONS = {
    "key_compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
}


async def issue(
    session: AsyncSession, ca: CertificateAuthority, device_id: str, key: DevicePublicKey, validity: timedelta
) -> DeviceCertificate:
    """A client certificate with the device id as subject common name, recorded for revocation."""
    certificate = ca.issue(key, device_id, client=True, validity=validity)
    row = DeviceCertificate(
        serial=format(certificate.serial_number, "x"),
        device_id=device_id,
        key_fingerprint=key_fingerprint(key),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        issued_at=utcnow(),
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )
    session.add(row)
    return row


async def revoke_for_device(
    session: AsyncSession, device_id: str, reason: str, *, except_key: str | None = None
) -> int:
    """Revokes the device's unexpired certificates (optionally sparing those of one key) and raises
    the CRL number so that every replica publishes and loads a new CRL."""
    now = utcnow()
    query = update(DeviceCertificate).where(
        DeviceCertificate.device_id == device_id,
        DeviceCertificate.revoked_at.is_(None),
        DeviceCertificate.not_after > now,
    )
    if except_key is not None:
        query = query.where(DeviceCertificate.key_fingerprint != except_key)
    result = await session.execute(query.values(revoked_at=now, revocation_reason=reason))
    count: int = result.rowcount  # type: ignore[attr-defined]
    if count:
        await bump_crl_number(session)
    return count


async def bump_crl_number(session: AsyncSession) -> None:
    state = await session.get(CrlState, 1, with_for_update=True)
    if state is None:
        session.add(CrlState(id=1, number=1, updated_at=utcnow()))
    else:
        state.number += 1
        state.updated_at = utcnow()


async def crl_number(database: Database) -> int:
    async with database.session() as session:
        state = await session.get(CrlState, 1)
    return state.number if state else 0


async def build_crl(
    database: Database, ca: CertificateAuthority, *, replacing: bytes | None = None
) -> tuple[int, bytes]:
    """The CRL (PEM) of every revoked certificate that has not expired yet, and its number.

    `replacing`: the CRL this one is to replace in a live TLS context. OpenSSL keeps using the
    first of an issuer's CRLs whose last-update time is not strictly later (to the second), so a
    CRL built within the same second as the one loaded would be ignored: its last update is put
    one second after that one's."""
    now = utcnow()
    last_update = now - CLOCK_SKEW
    if replacing is not None:
        loaded = x509.load_pem_x509_crl(replacing).last_update_utc
        # Never later than now: a CRL from the future would fail every handshake. Built from
        # five minutes back, that leaves room for 300 reloads in five minutes.
        last_update = min(max(last_update, loaded + timedelta(seconds=1)), now)
    async with database.session() as session:
        state = await session.get(CrlState, 1)
        rows: Sequence[tuple[str, datetime, str | None]] = (
            await session.execute(
                select(
                    DeviceCertificate.serial,
                    DeviceCertificate.revoked_at,
                    DeviceCertificate.revocation_reason,
                )
                .where(DeviceCertificate.revoked_at.is_not(None), DeviceCertificate.not_after > now)
                .order_by(DeviceCertificate.serial)
            )
        ).all()  # type: ignore[assignment]
    number = state.number if state else 0
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(last_update)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for serial, revoked_at, reason in rows:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(revoked_at.astimezone(UTC))
        )
        if reason in _REASONS:
            entry = entry.add_extension(x509.CRLReason(_REASONS[reason]), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.key, hashes.SHA256())
    return number, crl.public_bytes(serialization.Encoding.PEM)


async def publish_crl(
    database: Database, ca: CertificateAuthority, pki: PkiPaths, *, replacing: bytes | None = None
) -> tuple[int, bytes]:
    """Builds the CRL and writes it to the data directory (for Mosquitto's crlfile)."""
    number, pem = await build_crl(database, ca, replacing=replacing)
    await asyncio.to_thread(write_bytes_atomic, pki.crl, pem, 0o644)
    return number, pem


async def reload_crl(runtime: DevicesContext, *, force: bool = False) -> bool:
    """Loads a new CRL into this process's device listener when revocations happened (in any
    process or replica) or the loaded one nears its next update. Runs after every revocation and
    periodically.

    A server's main process also publishes it to the data directory; its device workers only load
    theirs, so that one writer keeps the file from going back to an older CRL."""
    # One reload at a time per process (the periodic one and one a revocation asked for), so
    # that an older CRL built first cannot be loaded last.
    async with runtime.device_tls.reloading:
        number = await crl_number(runtime.database)
        stale = crl_needs_refresh(runtime.device_tls.crl_pem)
        if runtime.primary and not runtime.pki.crl.exists():
            stale = True
        if not force and not stale and number <= runtime.device_tls.crl_number:
            return False
        loaded = runtime.device_tls.crl_pem
        if runtime.primary:
            number, pem = await publish_crl(runtime.database, runtime.ca, runtime.pki, replacing=loaded)
        else:
            number, pem = await build_crl(runtime.database, runtime.ca, replacing=loaded)
        runtime.device_tls.load_crl(pem, number=number)
        return True


def crl_needs_refresh(pem: bytes) -> bool:
    crl = x509.load_pem_x509_crl(pem)
    next_update = crl.next_update_utc
    return next_update is None or next_update - datetime.now(UTC) < CRL_REFRESH_BEFORE

"""Signed device requests (docs/device-api.md, "Signed requests"): verify the signature with the
key the payload names, and refuse stale or replayed payloads."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.devices.models import EnrollmentNonce

FRESHNESS = timedelta(minutes=5)
MAX_PAYLOAD_BYTES = 16 * 1024
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}\Z")

DevicePublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def _bad(detail: str, code: str = "invalid_request") -> ProblemError:
    return ProblemError(detail, code=code, status=400)


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _bad(f"{what} is not base64url") from None


def load_public_key(pem: str) -> DevicePublicKey:
    """An Ed25519 or ECDSA P-256 public key in PEM; anything else is refused."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise _bad("public_key is not a PEM public key", "invalid_public_key") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise _bad("public_key must be Ed25519 or ECDSA P-256", "invalid_public_key")


def key_fingerprint(key: DevicePublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_pem(key: DevicePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class SignedPayload:
    payload: dict[str, Any]
    key: DevicePublicKey
    fingerprint: str


def open_envelope(envelope: dict[str, Any], expected_type: str) -> SignedPayload:
    """Checks the signature against the payload's own public key (proof of possession), the
    payload type and the timestamp. The nonce is checked by `claim_nonce` inside the transaction."""
    payload_b64, signature_b64 = envelope.get("payload"), envelope.get("signature")
    if not isinstance(payload_b64, str) or not isinstance(signature_b64, str):
        raise _bad('the body is an envelope: {"payload": …, "signature": …}')
    raw = _b64decode(payload_b64, "payload")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise _bad("the payload is too large")
    signature = _b64decode(signature_b64, "signature")
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad("the payload is not JSON") from None
    if not isinstance(payload, dict):
        raise _bad("the payload is not a JSON object")
    if payload.get("type") != expected_type:
        raise _bad(f"the payload type must be {expected_type}")
    pem = payload.get("public_key")
    if not isinstance(pem, str):
        raise _bad("the payload needs public_key", "invalid_public_key")
    key = load_public_key(pem)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, raw)
        else:
            key.verify(signature, raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _bad(
            "the signature does not verify with the payload's public key", "invalid_signature"
        ) from None
    _check_fresh(payload)
    return SignedPayload(payload, key, key_fingerprint(key))


def _check_fresh(payload: dict[str, Any]) -> None:
    stamp, nonce = payload.get("timestamp"), payload.get("nonce")
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise _bad("nonce must be 16 to 128 characters of A-Z a-z 0-9 - _")
    if not isinstance(stamp, str):
        raise _bad("the payload needs a timestamp", "stale_request")
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise _bad("timestamp is not RFC 3339", "stale_request") from None
    if when.tzinfo is None:
        raise _bad("timestamp needs a time zone", "stale_request")
    if abs(utcnow() - when) > FRESHNESS:
        raise _bad("the request is too old or from the future: check the device's clock", "stale_request")


async def claim_nonce(session: AsyncSession, nonce: str) -> None:
    """Inside the caller's transaction: a nonce seen before is a replay. Old nonces are forgotten
    once their timestamps could no longer pass the freshness check."""
    await session.execute(delete(EnrollmentNonce).where(EnrollmentNonce.seen_at < utcnow() - 2 * FRESHNESS))
    try:
        async with session.begin_nested():
            session.add(EnrollmentNonce(nonce=nonce, seen_at=utcnow()))
    except IntegrityError:
        raise _bad("this request was already received (replayed nonce)", "replayed_request") from None

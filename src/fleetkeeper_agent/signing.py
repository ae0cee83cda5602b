"""The signed envelope of the device API: proof that the sender holds a private key.

`{"payload": b64url(JSON), "signature": b64url(sign(JSON bytes))}`, both without padding. The
signature covers the exact payload bytes sent, so the server never re-serializes before verifying.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

Signer = Callable[[bytes], bytes]


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_nonce() -> str:
    """24 characters of A-Z a-z 0-9 - _ (18 random bytes), inside the contract's 16 to 128."""
    return secrets.token_urlsafe(18)


def utc_timestamp(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with `Z`, to the second."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_envelope(payload: Mapping[str, Any], sign: Signer) -> dict[str, str]:
    """Add a fresh `timestamp` and `nonce` to `payload`, serialize it and sign the bytes.

    Each call makes a new nonce: the server refuses one it has seen, so a retry is a new envelope.
    """
    fields = {**payload, "timestamp": utc_timestamp(), "nonce": new_nonce()}
    data = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return {"payload": b64url_encode(data), "signature": b64url_encode(sign(data))}

"""The record format: canonical JSON, the hash that links records, and what details may hold.

Pure functions, no database: verification, export and auditors' own tools rely on the exact bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

GENESIS_HASH = "0" * 64
REDACTED = "[redacted]"
MAX_DETAILS_BYTES = 8 * 1024
_MAX_DEPTH = 16

# Compared against key names lowercased with everything but letters and digits removed, so that
# "privateKey", "private-key" and "PRIVATE_KEY" all match.
_SECRET_WORDS = (
    "password",
    "secret",
    "token",
    "code",
    "totp",
    "otp",
    "privatekey",
    "recovery",
    "credential",
    "authorization",
    "cookie",
)

# The JSON string encoder json.dumps(ensure_ascii=False) itself uses (its C version when present).
_string: Callable[[str], str] = encode_basestring
_sha256 = hashlib.sha256

# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 characters as themselves, no NaN or infinity."""
    return _ENCODER.encode(value)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds, always the same length: 2026-01-02T03:04:05.000006Z."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given; use an aware UTC datetime")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def record_hash(
    seq: int,
    id: str,
    occurred_at: str,
    actor_kind: str,
    actor_id: str | None,
    actor_name: str | None,
    actor_address: str | None,
    action: str,
    object_type: str,
    object_id: str | None,
    outcome: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical JSON object of every field but `hash`; `details` is the
    stored canonical JSON text, hashed as a string.

    Written out by hand for speed (verification hashes a million records); the bytes are exactly
    `canonical_json` of the same object, which the tests check.
    """
    text = (
        f'{{"action":{_string(action)}'
        f',"actor_address":{"null" if actor_address is None else _string(actor_address)}'
        f',"actor_id":{"null" if actor_id is None else _string(actor_id)}'
        f',"actor_kind":{_string(actor_kind)}'
        f',"actor_name":{"null" if actor_name is None else _string(actor_name)}'
        f',"details":{_string(details)}'
        f',"id":{_string(id)}'
        f',"object_id":{"null" if object_id is None else _string(object_id)}'
        f',"object_type":{_string(object_type)}'
        f',"occurred_at":{_string(occurred_at)}'
        f',"outcome":{_string(outcome)}'
        f',"prev_hash":{_string(prev_hash)}'
        f',"seq":{seq:d}}}'
    )
    return _sha256(text.encode("utf-8")).hexdigest()


def is_secret_key(name: str) -> bool:
    folded = "".join(char for char in name.lower() if char.isalnum())
    return any(word in folded for word in _SECRET_WORDS)


def redact(value: Any, _depth: int = 0) -> Any:
    """A JSON-ready copy with the value of every secret-looking key replaced, at any depth."""
    if _depth > _MAX_DEPTH:
        raise ValueError(f"details nest deeper than {_MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"details keys must be strings, not {type(key).__name__}")
            copy[key] = REDACTED if is_secret_key(key) else redact(item, _depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [redact(item, _depth + 1) for item in value]
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, datetime):
        return format_time(value)
    # bytes included: raw bytes in an audit record are more likely a key than anything useful.
    raise ValueError(f"details cannot hold a {type(value).__name__}")


def encode_details(details: Mapping[str, Any] | None) -> str:
    """Redacted canonical JSON. Details larger than MAX_DETAILS_BYTES are replaced by a summary
    (their size, SHA-256 and top-level keys): an action is never refused for its audit record."""
    redacted = redact(details or {})
    text = canonical_json(redacted)
    size = len(text.encode("utf-8"))
    if size > MAX_DETAILS_BYTES:
        summary = {
            "truncated": True,
            "size": size,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "keys": sorted(str(key) for key in redacted)[:50],
        }
        text = canonical_json(summary)
    return text

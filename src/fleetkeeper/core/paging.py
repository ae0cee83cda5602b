"""Keyset paging shared by every listing: the opaque cursor a page hands out, and the page itself.

A cursor is the sort key of the last row seen, as JSON in unpadded URL-safe base64: opaque to
clients, who pass it back unchanged. Decoding checks only that it is such a text; each listing
checks that the value has the shape it gave out (and raises `invalid_cursor()` when not).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fleetkeeper.core.errors import ProblemError

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    # Pass it back for the page after this one; None on the last page.
    next_cursor: str | None


def invalid_cursor() -> ProblemError:
    return ProblemError("the cursor is not one this server gave out", code="invalid_cursor")


def encode_cursor(value: Any, *, prefix: str = "") -> str:
    """`value` (JSON; other values as their str()) as a cursor; `prefix` marks the cursor's version."""
    raw = json.dumps(value, default=str).encode()
    return prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, prefix: str = "", max_length: int | None = None) -> Any:
    """The value `encode_cursor` put in `cursor`; raises invalid_cursor() for any other text."""
    if not cursor.startswith(prefix) or (max_length is not None and len(cursor) > max_length):
        raise invalid_cursor()
    encoded = cursor[len(prefix) :]
    try:
        return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise invalid_cursor() from None

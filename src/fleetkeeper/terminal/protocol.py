"""The frames of a terminal channel (docs/terminal.md, "Protocol"), on both WebSockets: the device's
channel and the operator's terminal.

Control messages are JSON text frames, objects with a `type`. Terminal bytes are binary frames:
one byte giving the length of the session id, the session id (ASCII), then the bytes. The relay
between replicas carries the same messages as JSON, with data base64-encoded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_CONTROL_BYTES = 16 * 1024
# Bytes of terminal data per relayed message: base64 of it, in JSON, stays well under the 8000-byte
# payload limit of PostgreSQL's NOTIFY.
DATA_CHUNK = 4096
SESSION_ID = re.compile(r"^[a-z]{1,8}_[0-9a-z]{26}\Z")

# Control messages each side may send, with the fields they need.
DEVICE_TO_SERVER = {
    "opened": ("session",),
    "refused": ("session", "code", "message"),
    "closed": ("session", "reason"),
    "file_ready": ("session",),
    "file_start": ("session", "size"),
    "file_ack": ("session", "received"),
    "file_end": ("session", "size", "sha256"),
    "file_error": ("session", "code", "message"),
    "pong": (),
}
OPERATOR_TO_SERVER = {
    "auth": ("token",),
    "resize": ("cols", "rows"),
    "close": (),
}


class MalformedFrameError(ValueError):
    """A frame that does not follow the protocol; `code` goes back to the sender in an error frame."""

    def __init__(self, message: str, code: str = "malformed_frame") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DataFrame:
    session: str
    data: bytes


def encode_data(session: str, data: bytes) -> bytes:
    raw = session.encode("ascii")
    return bytes([len(raw)]) + raw + data


def decode_data(frame: bytes) -> DataFrame:
    if not frame:
        raise MalformedFrameError("an empty binary frame")
    length = frame[0]
    if len(frame) < 1 + length:
        raise MalformedFrameError("a binary frame shorter than its session id")
    try:
        session = frame[1 : 1 + length].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedFrameError("a session id that is not ASCII") from None
    if not SESSION_ID.fullmatch(session):
        raise MalformedFrameError("not a session id")
    return DataFrame(session, frame[1 + length :])


def decode_control(text: str, allowed: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """A control message the sender may send, with its required fields; MalformedFrameError otherwise."""
    if len(text) > MAX_CONTROL_BYTES:
        raise MalformedFrameError(f"a control frame over {MAX_CONTROL_BYTES} bytes")
    try:
        message = json.loads(text)
    except ValueError:
        raise MalformedFrameError("a text frame that is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise MalformedFrameError("a control frame must be a JSON object with a type")
    kind = message["type"]
    if kind not in allowed:
        raise MalformedFrameError(f"unknown control frame type {kind[:40]!r}", code="unknown_type")
    missing = [name for name in allowed[kind] if name not in message]
    if missing:
        raise MalformedFrameError(f"{kind}: missing {', '.join(missing)}")
    session = message.get("session")
    if session is not None and (not isinstance(session, str) or not SESSION_ID.fullmatch(session)):
        raise MalformedFrameError(f"{kind}: session is not a session id")
    return message


def error_frame(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})

"""The frames of the device's control channel (docs/terminal.md, "Protocol"): terminal and file
bytes in binary frames named by their session, and the refusals the device answers with."""

from __future__ import annotations

from fleetkeeper_agent.errors import AgentError

READ_CHUNK = 16 * 1024
MAX_FRAME = 1024 * 1024


def encode_data(session: str, data: bytes) -> bytes:
    raw = session.encode("ascii")
    return bytes([len(raw)]) + raw + data


def decode_data(frame: bytes) -> tuple[str, bytes] | None:
    if not frame or len(frame) < 1 + frame[0]:
        return None
    try:
        return frame[1 : 1 + frame[0]].decode("ascii"), frame[1 + frame[0] :]
    except UnicodeDecodeError:
        return None


class RefusedError(AgentError):
    """What the device refuses the operator, sent back as `refused` or `file_error` with its code. The
    file helpers' own AgentErrors (`path_not_allowed`, `not_found`, …) are sent back the same way."""

"""HTTP/1.1 over one keep-alive TLS connection, written by hand: a simulated device costs a socket and a
few hundred bytes, not a client object with its pool (what lets one process drive 10,000 devices).

Only what the device listener answers is understood: `Content-Length` or chunked bodies, no
redirects, no compression. A body larger than the caller's bound is refused before it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from typing import Any

MAX_HEAD_BYTES = 16 * 1024
MAX_JSON_BYTES = 1024 * 1024  # director metadata of one device is a few KiB


class ProtocolError(Exception):
    """The server's answer is not HTTP as this client reads it."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext) -> Connection:
        """The caller bounds the time (asyncio.timeout)."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host, limit=MAX_HEAD_BYTES
        )
        return cls(reader, writer, host)

    async def request(
        self, method: str, path: str, body: Any = None, *, max_body: int = MAX_JSON_BYTES
    ) -> Response:
        """Sends `body` as JSON (none when None) and reads the whole answer, at most `max_body` bytes."""
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\nUser-Agent: fleetkeeper-sim\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if body is not None or method in ("POST", "PUT"):
            head += f"Content-Length: {len(content)}\r\n"
        self._writer.write(head.encode("ascii") + b"\r\n" + content)
        status, headers = await self._read_head()
        return Response(status, headers, await self._read_body(headers, max_body))

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ProtocolError("response head too large") from None
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def _read_body(self, headers: dict[str, str], max_body: int) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return await self._read_chunked(max_body)
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise ProtocolError(f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if length > max_body:
            raise ProtocolError(f"a {length}-byte answer, more than the {max_body} expected")
        return await self._reader.readexactly(length) if length else b""

    async def _read_chunked(self, max_body: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await self._reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            if size == 0:
                await self._reader.readuntil(b"\r\n")  # no trailers are sent by the server
                return b"".join(parts)
            total += size
            if total > max_body:
                raise ProtocolError(f"a chunked answer of more than the {max_body} bytes expected")
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1)


def problem_code(response: Response) -> str:
    """The problem document's `code`, or `http_<status>` when the body is not one."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        code = None
    return code if isinstance(code, str) else f"http_{response.status}"

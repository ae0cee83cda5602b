"""File transfers over the control channel, within `[terminal] file_roots`: uploads written beside
their target and renamed into place, downloads sent within a window of the server's acks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fleetkeeper_agent.channel_protocol import READ_CHUNK, RefusedError
from fleetkeeper_agent.files import components_beneath, create_file_beneath, open_file_beneath

if TYPE_CHECKING:
    from fleetkeeper_agent.channel import Channel

log = logging.getLogger(__name__)

FILE_WINDOW = 512 * 1024  # download bytes sent ahead of the server's acks
FILE_ACK_EVERY = 64 * 1024


class Upload:
    """Bytes from the operator into a temporary file beside the target, renamed into place once
    all have arrived: a broken transfer never leaves half a file under the target's name. The
    directory is held open from the request on (files.create_file_beneath): no link swapped in
    afterwards redirects the file."""

    def __init__(self, channel: Channel, session: str, path: str, size: int) -> None:
        config = channel.config
        if size < 0 or size > config.max_file_bytes:
            raise RefusedError(
                "file_too_large", f"the device accepts files up to {config.max_file_bytes} bytes"
            )
        root, parts = components_beneath(path, config.file_roots)
        self.path = path
        with _io_refusal(path):
            self.file = create_file_beneath(root, parts)
        self.channel = channel
        self.session = session
        self.size = size
        self.received = 0
        self.acked = 0
        self.digest = hashlib.sha256()

    async def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.size:
            raise RefusedError("length_mismatch", "more bytes than announced")
        self.digest.update(data)
        with _io_refusal(self.path):
            self.file.write(data)
        if self.received - self.acked >= FILE_ACK_EVERY:
            self.acked = self.received
            await self.channel.send_json(
                {"type": "file_ack", "session": self.session, "received": self.received}
            )

    def finish(self) -> tuple[int, str]:
        if self.received != self.size:
            self.abort()
            raise RefusedError("length_mismatch", f"{self.received} bytes arrived, {self.size} announced")
        with _io_refusal(self.path):
            self.file.commit()
        log.info("channel: received %s (%d bytes)", self.path, self.size)
        return self.size, self.digest.hexdigest()

    def abort(self) -> None:
        self.file.discard()


@contextlib.contextmanager
def _io_refusal(path: str) -> Iterator[None]:
    """A filesystem error (a full disk, a permission) is the operator's `io_error`, not the channel's end."""
    try:
        yield
    except OSError as exc:
        raise RefusedError("io_error", f"{path}: {exc.strerror or exc}") from None


class DownloadSender:
    """A file to the operator. It is opened when the request comes (files.open_file_beneath), and what
    is sent is what that descriptor reads: a link swapped in afterwards is never followed."""

    def __init__(self, channel: Channel, session: str, path: str, limit: int) -> None:
        root, parts = components_beneath(path, channel.config.file_roots)
        with _io_refusal(path):
            fd, info = open_file_beneath(root, parts)
        if info.st_size > limit:
            os.close(fd)
            raise RefusedError("file_too_large", f"{path} is over {limit} bytes")
        self.source = os.fdopen(fd, "rb")
        self.channel = channel
        self.session = session
        self.size = info.st_size
        self.acked = 0
        self._acked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send())

    def acknowledge(self, received: int) -> None:
        self.acked = max(self.acked, received)
        self._acked.set()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.source.close()  # a task cancelled before it ran would not close it

    async def _send(self) -> None:
        channel, session = self.channel, self.session
        await channel.send_json({"type": "file_start", "session": session, "size": self.size})
        digest = hashlib.sha256()
        sent = 0
        try:
            with self.source as handle:
                while sent < self.size:
                    while sent - self.acked > FILE_WINDOW:
                        self._acked.clear()
                        await self._acked.wait()
                    chunk = handle.read(min(READ_CHUNK, self.size - sent))
                    if not chunk:
                        break
                    digest.update(chunk)
                    sent += len(chunk)
                    await channel.send_data(session, chunk)
        except OSError as exc:
            await channel.send_json(
                {"type": "file_error", "session": session, "code": "io_error", "message": str(exc)}
            )
            return
        finally:
            channel.transfers.pop(session, None)
        await channel.send_json(
            {"type": "file_end", "session": session, "size": sent, "sha256": digest.hexdigest()}
        )

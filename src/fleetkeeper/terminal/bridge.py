"""The operator's side of a session, on the replica the operator is connected to: it opens the
session on the device through the relay, carries bytes both ways, enforces the idle timeout and
the maximum length, records the output, and closes the session on record with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket

from fleetkeeper.access.principal import Principal
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.logging import get_logger
from fleetkeeper.terminal import service
from fleetkeeper.terminal.context import TerminalContext
from fleetkeeper.terminal.models import TerminalSession
from fleetkeeper.terminal.protocol import (
    DATA_CHUNK,
    OPERATOR_TO_SERVER,
    MalformedFrameError,
    decode_control,
    decode_data,
    encode_data,
    error_frame,
)
from fleetkeeper.terminal.recording import Recording
from fleetkeeper.terminal.relay import RelayOverflowError, Subscription

log = get_logger(__name__)

# Unacknowledged file bytes in flight: the device acknowledges every FILE_ACK_EVERY bytes. A window
# well under what a relay queue holds means a transfer never overflows one.
FILE_WINDOW = 512 * 1024
FILE_ACK_EVERY = 64 * 1024
SERVICE_RESTART = 1012

CLOSE_MESSAGES = {
    "exited": "the shell exited",
    "idle_timeout": "no input or output for too long",
    "max_session_length": "the session reached its maximum length",
    "operator_closed": "the operator closed the session",
    "operator_disconnected": "the operator's connection dropped",
    "device_disconnected": "the device's connection dropped",
    "operator_too_slow": "the operator did not read the output fast enough",
    "device_overloaded": "the device's channel could not keep up",
    "input_flood": "more input than the device could take",
    "server_shutdown": "the server is shutting down",
    "replaced": "the device opened a new channel",
}


def device_topic(device_id: str) -> str:
    return f"device:{device_id}"


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


class DeviceRefusedError(ProblemError):
    """The device said no (terminal switched off, too many sessions, a path outside its roots), or
    it is not connected."""


_FILE_ERROR_STATUS = {
    "path_not_allowed": 403,
    "terminal_disabled": 409,
    "files_disabled": 409,
    "file_too_large": 413,
    "not_found": 404,
    "is_a_directory": 409,
    "too_many_sessions": 409,
    "device_not_connected": 503,
}


def _refusal(code: str, message: str) -> DeviceRefusedError:
    return DeviceRefusedError(message, code=code, status=_FILE_ERROR_STATUS.get(code, 502))


async def _await_answer(
    subscription: Subscription, seconds: float, wanted: tuple[str, ...]
) -> dict[str, Any]:
    """The device's answer to an open (or a file request); `device_not_connected` when none comes
    in time: a device whose channel is up answers at once."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await subscription.get()
                if message.get("type") in wanted:
                    return message
    except TimeoutError:
        raise _refusal("device_not_connected", "the device's channel is not connected") from None


@dataclass
class TerminalBridge:
    runtime: TerminalContext
    websocket: WebSocket
    principal: Principal
    row: TerminalSession
    cols: int
    rows: int
    bytes_in: int = 0
    bytes_out: int = 0
    last_activity: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        settings = self.runtime.settings
        relay = self.runtime.terminal_relay
        actor = self.principal.actor
        recording = Recording(
            self.cols,
            self.rows,
            max_bytes=settings.terminal_max_recording_bytes,
            title=f"{self.principal.username} on {self.row.device_id}",
        )
        async with relay.subscribe(session_topic(self.row.id)) as subscription:
            await relay.publish(
                device_topic(self.row.device_id),
                {
                    "type": "open",
                    "session": self.row.id,
                    "cols": self.cols,
                    "rows": self.rows,
                    "user": self.principal.username,
                },
            )
            try:
                answer = await _await_answer(
                    subscription, settings.terminal_open_timeout, ("opened", "refused")
                )
            except DeviceRefusedError as exc:
                answer = {"type": "refused", "code": exc.code, "message": exc.detail}
            if answer["type"] == "refused":
                code, message = str(answer.get("code")), str(answer.get("message"))
                await service.refused(self.runtime, self.row, actor, code, message)
                await self._send_json(
                    {"type": "refused", "session": self.row.id, "code": code, "message": message}
                )
                await self.websocket.close(4409)
                return
            await service.opened(self.runtime, self.row, actor, self.cols, self.rows)
            await self._send_json({"type": "opened", "session": self.row.id})
            ending = service.Ending(reason="server_shutdown")
            try:
                ending = await self._pump(subscription, recording)
            finally:
                if ending.reason not in ("exited", "device_disconnected"):
                    with contextlib.suppress(Exception):
                        await relay.publish(
                            device_topic(self.row.device_id),
                            {"type": "close", "session": self.row.id, "reason": ending.reason},
                        )
                ending.bytes_in, ending.bytes_out = self.bytes_in, self.bytes_out
                key = service.recording_key(self.row.id)
                try:
                    await recording.save(self.runtime.object_store, key)
                    ending.recording_key = key
                except Exception:
                    log.exception("terminal: the recording could not be stored", session=self.row.id)
                await asyncio.shield(service.finish(self.runtime, self.row, actor, ending))
        with contextlib.suppress(Exception):
            await self._send_json(
                {
                    "type": "closed",
                    "session": self.row.id,
                    "reason": ending.reason,
                    "exit_status": ending.exit_status,
                    "message": CLOSE_MESSAGES.get(ending.reason, ending.reason),
                }
            )
            await self.websocket.close(1000)

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(message))

    async def _pump(self, subscription: Subscription, recording: Recording) -> service.Ending:
        settings = self.runtime.settings
        started = time.monotonic()
        from_operator = asyncio.create_task(self.websocket.receive())
        from_device = asyncio.create_task(subscription.get())
        try:
            while True:
                now = time.monotonic()
                idle_left = settings.terminal_idle_timeout - (now - self.last_activity)
                length_left = settings.terminal_max_session_seconds - (now - started)
                if length_left <= 0:
                    return service.Ending("max_session_length")
                if idle_left <= 0:
                    return service.Ending("idle_timeout")
                done, _ = await asyncio.wait(
                    {from_operator, from_device},
                    timeout=min(idle_left, length_left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if from_device in done:
                    try:
                        message = from_device.result()
                    except RelayOverflowError:
                        return service.Ending("operator_too_slow")
                    ending = await self._from_device(message, recording)
                    if ending is not None:
                        return ending
                    from_device = asyncio.create_task(subscription.get())
                if from_operator in done:
                    ending = await self._from_operator(from_operator.result(), recording)
                    if ending is not None:
                        return ending
                    from_operator = asyncio.create_task(self.websocket.receive())
        finally:
            for task in (from_operator, from_device):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _from_device(self, message: dict[str, Any], recording: Recording) -> service.Ending | None:
        kind = message.get("type")
        if kind == "data" and isinstance(message.get("data"), bytes):
            data: bytes = message["data"]
            self.bytes_out += len(data)
            self.last_activity = time.monotonic()
            recording.output(data)
            await self.websocket.send_bytes(encode_data(self.row.id, data))
        elif kind == "closed":
            status = message.get("exit_status")
            return service.Ending(
                str(message.get("reason") or "exited"),
                exit_status=status if isinstance(status, int) else None,
            )
        return None

    async def _from_operator(self, event: Message, recording: Recording) -> service.Ending | None:
        if event["type"] == "websocket.disconnect":
            # uvicorn closes every WebSocket with 1012 (service restart) when the server stops.
            stopping = event.get("code") == SERVICE_RESTART
            return service.Ending("server_shutdown" if stopping else "operator_disconnected")
        relay = self.runtime.terminal_relay
        topic = device_topic(self.row.device_id)
        try:
            if event.get("bytes") is not None:
                frame = decode_data(event["bytes"])
                if frame.session != self.row.id:
                    # Only the connection that opened a session may write to it.
                    await self.websocket.send_text(
                        error_frame("session_not_yours", "this connection did not open that session")
                    )
                    return None
                self.bytes_in += len(frame.data)
                self.last_activity = time.monotonic()
                for start in range(0, len(frame.data), DATA_CHUNK):
                    chunk = frame.data[start : start + DATA_CHUNK]
                    await relay.publish(topic, {"type": "data", "session": self.row.id, "data": chunk})
                return None
            message = decode_control(event.get("text") or "", OPERATOR_TO_SERVER)
        except MalformedFrameError as exc:
            await self.websocket.send_text(error_frame(exc.code, str(exc)))
            return None
        if message["type"] == "resize":
            cols, rows = message.get("cols"), message.get("rows")
            if not (
                isinstance(cols, int) and isinstance(rows, int) and 1 <= cols <= 1000 and 1 <= rows <= 1000
            ):
                await self.websocket.send_text(
                    error_frame("malformed_frame", "resize: cols and rows are 1 to 1000")
                )
                return None
            recording.resize(cols, rows)
            await relay.publish(topic, {"type": "resize", "session": self.row.id, "cols": cols, "rows": rows})
        elif message["type"] == "close":
            return service.Ending("operator_closed")
        return None


# --- file transfers ---------------------------------------------------------------------------


@dataclass
class FileResult:
    session: str
    path: str
    size: int
    sha256: str


async def upload(
    runtime: TerminalContext,
    principal: Principal,
    row: TerminalSession,
    size: int,
    body: AsyncIterator[bytes],
) -> FileResult:
    """Streams `body` to the device through the relay, `FILE_WINDOW` bytes ahead of its acks."""
    relay = runtime.terminal_relay
    topic = device_topic(row.device_id)
    assert row.path is not None
    ending = service.Ending(reason="failed", failed=True, size=size)
    try:
        async with relay.subscribe(session_topic(row.id)) as subscription:
            await relay.publish(
                topic, {"type": "file_put", "session": row.id, "path": row.path, "size": size}
            )
            answer = await _await_answer(
                subscription, runtime.settings.terminal_open_timeout, ("file_ready", "file_error", "refused")
            )
            if answer["type"] != "file_ready":
                raise _refusal(str(answer.get("code")), str(answer.get("message")))
            sent = acked = 0
            digest = hashlib.sha256()
            async for block in body:
                for start in range(0, len(block), DATA_CHUNK):
                    chunk = block[start : start + DATA_CHUNK]
                    while sent - acked > FILE_WINDOW:
                        acked = _acked(await _next_file_message(subscription, runtime), acked)
                    sent += len(chunk)
                    if sent > size:
                        raise ProblemError(
                            "the body is longer than its Content-Length", code="length_mismatch"
                        )
                    digest.update(chunk)
                    await relay.publish(topic, {"type": "data", "session": row.id, "data": chunk})
            if sent != size:
                raise ProblemError("the body is shorter than its Content-Length", code="length_mismatch")
            await relay.publish(topic, {"type": "file_end", "session": row.id, "size": size})
            while True:
                message = await _next_file_message(subscription, runtime)
                if message["type"] == "file_end":
                    break
            if message.get("sha256") != digest.hexdigest() or message.get("size") != size:
                raise ProblemError(
                    "the device stored something else than was sent", code="transfer_corrupted"
                )
            ending = service.Ending(reason="complete", bytes_in=size, size=size, sha256=digest.hexdigest())
            return FileResult(row.id, row.path, size, digest.hexdigest())
    except DeviceRefusedError as exc:
        ending.reason = exc.code
        raise
    except ProblemError as exc:
        ending.reason = exc.code
        with contextlib.suppress(Exception):
            await relay.publish(topic, {"type": "close", "session": row.id, "reason": exc.code})
        raise
    finally:
        await asyncio.shield(service.finish(runtime, row, principal.actor, ending))


def _acked(message: dict[str, Any], acked: int) -> int:
    received = message.get("received")
    return received if isinstance(received, int) and received > acked else acked


async def _next_file_message(subscription: Subscription, runtime: TerminalContext) -> dict[str, Any]:
    """The device's next message about this transfer; its errors raise."""
    try:
        async with asyncio.timeout(runtime.settings.terminal_idle_timeout):
            message = await subscription.get()
    except TimeoutError:
        raise _refusal("device_timeout", "the device stopped answering") from None
    except RelayOverflowError:
        raise _refusal("device_overloaded", "the transfer could not keep up") from None
    kind = message.get("type")
    if kind in ("file_error", "refused"):
        raise _refusal(str(message.get("code")), str(message.get("message")))
    if kind == "closed":
        raise _refusal(str(message.get("reason")), "the device ended the transfer")
    return message


@dataclass
class Download:
    """A download the device agreed to: `size` bytes will follow. Iterate it once."""

    runtime: TerminalContext
    principal: Principal
    row: TerminalSession
    size: int
    subscription: Subscription
    stack: contextlib.AsyncExitStack

    async def chunks(self) -> AsyncIterator[bytes]:
        relay = self.runtime.terminal_relay
        topic = device_topic(self.row.device_id)
        received = last_ack = 0
        digest = hashlib.sha256()
        ending = service.Ending(reason="failed", failed=True, size=self.size)
        try:
            while True:
                message = await _next_file_message(self.subscription, self.runtime)
                kind = message.get("type")
                if kind == "data" and isinstance(message.get("data"), bytes):
                    data: bytes = message["data"]
                    received += len(data)
                    if received > self.size:
                        raise _refusal("transfer_corrupted", "the device sent more than it announced")
                    digest.update(data)
                    yield data
                    if received - last_ack >= FILE_ACK_EVERY:
                        last_ack = received
                        await relay.publish(
                            topic, {"type": "file_ack", "session": self.row.id, "received": received}
                        )
                elif kind == "file_end":
                    if received != self.size or message.get("sha256") != digest.hexdigest():
                        raise _refusal("transfer_corrupted", "the device's file changed during the transfer")
                    ending = service.Ending(
                        reason="complete", bytes_out=received, size=received, sha256=digest.hexdigest()
                    )
                    return
        except DeviceRefusedError as exc:
            ending.reason = exc.code
            raise
        finally:
            ending.bytes_out = received
            if ending.failed:
                with contextlib.suppress(Exception):
                    await relay.publish(
                        topic, {"type": "close", "session": self.row.id, "reason": ending.reason}
                    )
            await asyncio.shield(service.finish(self.runtime, self.row, self.principal.actor, ending))
            await self.stack.aclose()


async def start_download(runtime: TerminalContext, principal: Principal, row: TerminalSession) -> Download:
    relay = runtime.terminal_relay
    stack = contextlib.AsyncExitStack()
    try:
        subscription = await stack.enter_async_context(relay.subscribe(session_topic(row.id)))
        await relay.publish(
            device_topic(row.device_id),
            {
                "type": "file_get",
                "session": row.id,
                "path": row.path,
                "max_bytes": runtime.settings.terminal_max_file_bytes,
            },
        )
        answer = await _await_answer(
            subscription, runtime.settings.terminal_open_timeout, ("file_start", "file_error", "refused")
        )
        if answer["type"] != "file_start":
            raise _refusal(str(answer.get("code")), str(answer.get("message")))
        size = answer.get("size")
        if not isinstance(size, int) or not 0 <= size <= runtime.settings.terminal_max_file_bytes:
            raise _refusal(
                "file_too_large", f"the file is over {runtime.settings.terminal_max_file_bytes} bytes"
            )
    except ProblemError as exc:
        await stack.aclose()
        await service.finish(runtime, row, principal.actor, service.Ending(reason=exc.code, failed=True))
        raise
    return Download(runtime, principal, row, size, subscription, stack)

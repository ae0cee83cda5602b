"""The server's end of a device's control channel: messages for the device come from the relay
(whichever replica the operator is on) and go down the WebSocket; the device's answers and output
go back through the relay to the session's topic.

The device may speak only about sessions opened on this channel: a frame naming any other
session gets an error frame and goes nowhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from fleetkeeper.core.logging import get_logger
from fleetkeeper.terminal.bridge import device_topic, session_topic
from fleetkeeper.terminal.context import TerminalContext
from fleetkeeper.terminal.protocol import (
    DATA_CHUNK,
    DEVICE_TO_SERVER,
    MalformedFrameError,
    decode_control,
    decode_data,
    encode_data,
    error_frame,
)
from fleetkeeper.terminal.relay import RelayOverflowError, Subscription

log = get_logger(__name__)

# Messages from the relay that go down to the device as control frames.
TO_DEVICE = {"open", "resize", "close", "file_put", "file_get", "file_end", "file_ack"}
# The device's answers that end a session or transfer on this channel.
ENDINGS = {"closed", "refused", "file_error", "file_end"}

# The channel each device holds on this replica: a new one replaces the old (a device whose
# connection died without a close reconnects before the server notices).
_channels: dict[str, DeviceChannel] = {}


class DeviceChannel:
    def __init__(self, runtime: TerminalContext, websocket: WebSocket, device_id: str) -> None:
        self.runtime = runtime
        self.websocket = websocket
        self.device_id = device_id
        self.sessions: set[str] = set()
        self._replaced = asyncio.Event()

    async def run(self) -> None:
        previous = _channels.get(self.device_id)
        if previous is not None:
            previous._replaced.set()
        _channels[self.device_id] = self
        relay = self.runtime.terminal_relay
        reason = "device_disconnected"
        try:
            async with relay.subscribe(device_topic(self.device_id)) as subscription:
                reason = await self._pump(subscription)
        finally:
            if _channels.get(self.device_id) is self:
                del _channels[self.device_id]
            for session in list(self.sessions):
                with contextlib.suppress(Exception):
                    await relay.publish(
                        session_topic(session), {"type": "closed", "session": session, "reason": reason}
                    )
            with contextlib.suppress(Exception):
                await self.websocket.close(1000 if reason == "replaced" else 1011)

    async def _pump(self, subscription: Subscription) -> str:
        from_device = asyncio.create_task(self.websocket.receive())
        from_relay = asyncio.create_task(subscription.get())
        replaced = asyncio.create_task(self._replaced.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {from_device, from_relay, replaced}, return_when=asyncio.FIRST_COMPLETED
                )
                if replaced in done:
                    return "replaced"
                if from_relay in done:
                    try:
                        await self._to_device(from_relay.result())
                    except RelayOverflowError:
                        await self._overloaded()
                    from_relay = asyncio.create_task(subscription.get())
                if from_device in done:
                    event = from_device.result()
                    if event["type"] == "websocket.disconnect":
                        return "device_disconnected"
                    await self._from_device(event)
                    from_device = asyncio.create_task(self.websocket.receive())
        except WebSocketDisconnect:
            return "device_disconnected"
        finally:
            for task in (from_device, from_relay, replaced):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _overloaded(self) -> None:
        """Messages for this device were lost (it did not take them as fast as they came): the
        sessions they belonged to cannot go on, but the channel can."""
        relay = self.runtime.terminal_relay
        for session in list(self.sessions):
            self.sessions.discard(session)
            await self._send({"type": "close", "session": session, "reason": "device_overloaded"})
            await relay.publish(
                session_topic(session), {"type": "closed", "session": session, "reason": "device_overloaded"}
            )

    async def _send(self, message: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(message))

    async def _to_device(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        session = message.get("session")
        if not isinstance(session, str):
            return
        if kind in ("open", "file_put", "file_get"):
            self.sessions.add(session)
        elif session not in self.sessions:
            return
        if kind == "data" and isinstance(message.get("data"), bytes):
            await self.websocket.send_bytes(encode_data(session, message["data"]))
        elif kind in TO_DEVICE:
            # After a close the device still answers `closed`: the session is forgotten then.
            await self._send(message)

    async def _from_device(self, event: Message) -> None:
        relay = self.runtime.terminal_relay
        try:
            if event.get("bytes") is not None:
                frame = decode_data(event["bytes"])
                self._ensure_known(frame.session)
                for start in range(0, len(frame.data), DATA_CHUNK):
                    chunk = frame.data[start : start + DATA_CHUNK]
                    await relay.publish(
                        session_topic(frame.session),
                        {"type": "data", "session": frame.session, "data": chunk},
                    )
                return
            message = decode_control(event.get("text") or "", DEVICE_TO_SERVER)
        except MalformedFrameError as exc:
            await self.websocket.send_text(error_frame(exc.code, str(exc)))
            return
        session = message.get("session")
        if session is None:
            return  # pong
        try:
            self._ensure_known(session)
        except MalformedFrameError as exc:
            await self.websocket.send_text(error_frame(exc.code, str(exc)))
            return
        if message["type"] in ENDINGS:
            self.sessions.discard(session)
        for text_field in ("message", "reason", "code"):
            if isinstance(message.get(text_field), str):
                message[text_field] = message[text_field][:500]
        await relay.publish(session_topic(session), message)

    def _ensure_known(self, session: str) -> None:
        if session not in self.sessions:
            raise MalformedFrameError("no such session on this channel", code="unknown_session")

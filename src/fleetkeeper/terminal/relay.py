"""Messages between the replica that holds an operator's connection and the one that holds the
device's channel: PostgreSQL LISTEN/NOTIFY when the database is PostgreSQL (replicas share it), an
in-process relay on SQLite (one process by design).

A topic is `device:<id>` (towards the device's channel) or `session:<id>` (towards the operator).
Messages are dicts; terminal and file bytes travel under "data" as bytes, base64 on the wire.
Each subscription holds a bounded queue: a subscriber that cannot keep up loses messages and is
told so (`overflowed`), and its owner ends the session with a reason instead of buffering forever.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

from fleetkeeper.core.logging import get_logger

log = get_logger(__name__)

QUEUE_MESSAGES = 512
NOTIFY_PAYLOAD_LIMIT = 7999  # PostgreSQL refuses payloads of 8000 bytes or more


class Subscription:
    def __init__(self, topic: str, size: int = QUEUE_MESSAGES) -> None:
        self.topic = topic
        self.overflowed = False
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)

    def deliver(self, message: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            # The reader fell behind: it learns it, and drops the session, at its next get().
            self.overflowed = True

    async def get(self) -> dict[str, Any]:
        """The next message; RelayOverflowError (once) if some were lost since the last get."""
        if self.overflowed:
            self.overflowed = False
            raise RelayOverflowError(self.topic)
        return await self._queue.get()


class RelayOverflowError(Exception):
    """The subscriber fell behind and messages were dropped."""


class Relay(Protocol):
    def subscribe(self, topic: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    async def publish(self, topic: str, message: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class _Subscribers:
    def __init__(self) -> None:
        self.by_topic: dict[str, set[Subscription]] = {}

    def add(self, subscription: Subscription) -> bool:
        """True when it is the topic's first subscriber."""
        members = self.by_topic.setdefault(subscription.topic, set())
        members.add(subscription)
        return len(members) == 1

    def remove(self, subscription: Subscription) -> bool:
        """True when it was the topic's last subscriber."""
        members = self.by_topic.get(subscription.topic, set())
        members.discard(subscription)
        if members:
            return False
        self.by_topic.pop(subscription.topic, None)
        return True

    def deliver(self, topic: str, message: dict[str, Any]) -> None:
        for subscription in list(self.by_topic.get(topic, ())):
            subscription.deliver(message)


class InProcessRelay:
    """One process: a dict of subscribers."""

    def __init__(self) -> None:
        self._subscribers = _Subscribers()

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(topic)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.remove(subscription)

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        self._subscribers.deliver(topic, message)

    async def close(self) -> None:
        return None


def encode_message(topic: str, message: dict[str, Any]) -> str:
    wire = dict(message)
    if isinstance(wire.get("data"), bytes):
        wire["data"] = base64.b64encode(wire["data"]).decode("ascii")
    wire["topic"] = topic
    return json.dumps(wire, separators=(",", ":"))


def decode_message(payload: str) -> tuple[str, dict[str, Any]]:
    message: dict[str, Any] = json.loads(payload)
    topic = str(message.pop("topic"))
    if isinstance(message.get("data"), str):
        message["data"] = base64.b64decode(message["data"])
    return topic, message


# A connection that failed in any of these ways is dropped and a new one opened.
_CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def channel_name(topic: str) -> str:
    """A PostgreSQL identifier for the topic: device and session ids are not all identifier-safe,
    and an identifier is at most 63 bytes."""
    return "fkt_" + hashlib.sha256(topic.encode()).hexdigest()[:40]


class PostgresRelay:
    """LISTEN/NOTIFY on one connection of its own (asyncpg, outside SQLAlchemy's pool: a pooled
    connection would be handed to someone else with its LISTENs still on). The connection is
    opened at the first use and opened again, with the topics listened to again, if it dropped."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._subscribers = _Subscribers()
        self._listening: set[str] = set()
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None

    async def _connected(self) -> asyncpg.Connection:
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        connection = await asyncpg.connect(self._dsn)
        connection.add_termination_listener(self._lost)
        self._connection = connection
        self._listening = set()
        for topic in list(self._subscribers.by_topic):
            await self._listen(connection, topic)
        return connection

    def _drop(self) -> None:
        """Forget a connection that failed: the next use opens a new one."""
        if self._connection is not None:
            self._connection.terminate()
        self._connection = None

    def _lost(self, connection: object) -> None:
        """The server closed the listening connection (a restart, a failover): listen again at
        once, not at the next publish, so that a replica that only listens keeps hearing."""
        if connection is self._connection and not self._closing and self._subscribers.by_topic:
            self._connection = None
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        for attempt in range(10):
            try:
                async with self._lock:
                    await self._connected()
                return
            except _CONNECTION_ERRORS:
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
        log.error("terminal relay: cannot listen on PostgreSQL again; sessions through this replica fail")

    async def _execute(self, query: str, *args: object) -> None:
        """`query` on the relay's connection, once more on a new connection if it failed."""
        for attempt in (1, 2):
            try:
                connection = await self._connected()
                await connection.execute(query, *args)
                return
            except _CONNECTION_ERRORS:
                self._drop()
                if attempt == 2:
                    raise

    async def _listen(self, connection: asyncpg.Connection, topic: str) -> None:
        channel = channel_name(topic)
        if channel not in self._listening:
            await connection.add_listener(channel, self._notified)
            self._listening.add(channel)

    def _notified(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            topic, message = decode_message(payload)
        except (ValueError, KeyError, TypeError):
            log.warning("terminal relay: a notification that is not ours", channel=channel)
            return
        self._subscribers.deliver(topic, message)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(topic)
        async with self._lock:
            self._subscribers.add(subscription)
            for attempt in (1, 2):
                try:
                    await self._listen(await self._connected(), topic)
                    break
                except _CONNECTION_ERRORS:
                    self._drop()
                    if attempt == 2:
                        self._subscribers.remove(subscription)
                        raise
                except BaseException:
                    self._subscribers.remove(subscription)
                    raise
        try:
            yield subscription
        finally:
            async with self._lock:
                if self._subscribers.remove(subscription):
                    channel = channel_name(topic)
                    connection = self._connection
                    if connection is not None and not connection.is_closed() and channel in self._listening:
                        self._listening.discard(channel)
                        with contextlib.suppress(*_CONNECTION_ERRORS):
                            await connection.remove_listener(channel, self._notified)

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        payload = encode_message(topic, message)
        if len(payload.encode()) > NOTIFY_PAYLOAD_LIMIT:
            raise ValueError(f"a relayed message of {len(payload)} bytes is over the NOTIFY limit")
        async with self._lock:
            await self._execute("SELECT pg_notify($1, $2)", channel_name(topic), payload)

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed():
                await self._connection.close()
            self._connection = None


def relay_for(database_url: str) -> Relay:
    if database_url.startswith("postgresql"):
        return PostgresRelay(database_url)
    return InProcessRelay()

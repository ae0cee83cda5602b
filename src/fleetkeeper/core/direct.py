"""A hot path's single statements on asyncpg's own connections, compiled once.

Per execution, SQLAlchemy spends about as much of the server's CPU as PostgreSQL spends running
the device check-in's statement: the statement's cache key built anew from its whole tree, a
greenlet switch per call, the row's processing. A hot path's statement is one object built once
(`functools.cache`), so here it is compiled once into PostgreSQL's SQL with the order of its
parameters, and run on a few asyncpg connections of its own (each prepares it once: asyncpg's own
statement cache). Parameters and results still go through the column types' processors, so a
row reads as SQLAlchemy would have returned it.

Only for statements whose parameters are all plain values (no expanding `IN`), on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import Executable
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

# A connection the server closed (a restart, a failover, an administrator's pg_terminate_backend):
# asyncpg drops it from the pool; a statement that is safe to send twice is sent once more.
DISCONNECTED = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,
)


_REQUIRED = object()


class CompiledStatement:
    """One statement as PostgreSQL's SQL, its parameters in order and its types' processors."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("a statement with an expanding IN parameter cannot be compiled once")
        self.sql = compiled.string
        # Per positional parameter: the key a caller binds it by, the value the statement carries
        # itself (a literal's), and its type's processor — so that a call only looks values up.
        self._parameters: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            processor = bind.type._cached_bind_processor(dialect)
            self._parameters.append(
                (bind.key, _REQUIRED if bind.required else bind.effective_value, processor)
            )
        self._result_processors: list[Callable[[Any], Any] | None] = [
            column.type._cached_result_processor(dialect, None) for column in compiled._result_columns
        ]

    def arguments(self, parameters: dict[str, Any]) -> list[Any]:
        arguments = []
        for key, carried, processor in self._parameters:
            value = parameters.get(key, carried)
            if value is _REQUIRED:
                raise ValueError(f"the statement's parameter {key!r} was not given")
            arguments.append(processor(value) if processor is not None else value)
        return arguments

    def row(self, record: asyncpg.Record) -> tuple[Any, ...]:
        return tuple(
            processor(value) if processor is not None else value
            for processor, value in zip(self._result_processors, record, strict=True)
        )


class Connections:
    """At most `size` asyncpg connections, each lent for one statement.

    asyncpg's own pool spends two to four times a check-in statement's round trip on each
    checkout (its holders, timeouts, the reset on release); lending an idle connection here is a
    list pop. A connection that took part in a statement that failed in any way is closed rather
    than lent again, so that no half-finished exchange reaches the next statement."""

    def __init__(self, dsn: str, size: int, server_settings: dict[str, str]) -> None:
        self._dsn = dsn
        self._size = size
        self._server_settings = server_settings
        self._idle: list[asyncpg.Connection] = []
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._counted = 0  # open or being opened
        self._closed = False

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[asyncpg.Connection]:
        connection = await self._acquire()
        try:
            yield connection
        except BaseException:
            connection.terminate()
            self._give_back(connection)
            raise
        self._give_back(connection)

    async def _acquire(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise ConnectionError("the database connections are closed")
            while self._idle:
                connection = self._idle.pop()
                if not connection.is_closed():
                    return connection
                self._counted -= 1
            if self._counted < self._size:
                self._counted += 1
                try:
                    return await asyncpg.connect(self._dsn, server_settings=self._server_settings)
                except BaseException:
                    self._counted -= 1
                    self._wake_one(None)
                    raise
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                # Handed something just before the cancellation: pass it on.
                if waiter.done() and not waiter.cancelled():
                    if (connection := waiter.result()) is not None:
                        self._give_back(connection)
                    else:
                        self._wake_one(None)
                raise
            if handed is not None:
                return handed
            # None: a connection was dropped; its place is free to open another.

    def _give_back(self, connection: asyncpg.Connection) -> None:
        if connection.is_closed() or self._closed:
            if not connection.is_closed():
                connection.terminate()
            self._counted -= 1
            self._wake_one(None)
        elif not self._wake_one(connection):
            self._idle.append(connection)

    def _wake_one(self, handed: asyncpg.Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return True
        return False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._counted -= len(idle)
        await asyncio.gather(*(connection.close() for connection in idle), return_exceptions=True)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the database connections are closed"))


class DirectStatements:
    """Connections in autocommit (asyncpg's default outside a transaction) for the hot path's
    single statements, opened when first needed."""

    def __init__(
        self, sqlalchemy_url: str, dialect: Dialect, pool_size: int, server_settings: dict[str, str]
    ) -> None:
        url = make_url(sqlalchemy_url).set(drivername="postgresql")
        self._connections = Connections(url.render_as_string(hide_password=False), pool_size, server_settings)
        self._dialect = dialect
        self._compiled: dict[int, tuple[Executable, CompiledStatement]] = {}

    def compiled(self, statement: Executable) -> CompiledStatement:
        # Keyed by identity, the statement kept alongside so that its id cannot be reused.
        found = self._compiled.get(id(statement))
        if found is None:
            found = (statement, CompiledStatement(statement, self._dialect))
            self._compiled[id(statement)] = found
        return found[1]

    async def fetch_row(self, statement: Executable, parameters: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a read-only statement; sent once more on a connection found closed."""
        compiled = self.compiled(statement)
        arguments = compiled.arguments(parameters)
        try:
            async with self._connections.lend() as connection:
                record = await connection.fetchrow(compiled.sql, *arguments)
        except DISCONNECTED:
            async with self._connections.lend() as connection:
                record = await connection.fetchrow(compiled.sql, *arguments)
        return compiled.row(record) if record is not None else None

    async def execute(self, statement: Executable, parameters: dict[str, Any], *, idempotent: bool) -> None:
        """One write that commits by itself; sent once more on a closed connection if `idempotent`."""
        compiled = self.compiled(statement)
        arguments = compiled.arguments(parameters)
        try:
            async with self._connections.lend() as connection:
                await connection.execute(compiled.sql, *arguments)
        except DISCONNECTED:
            if not idempotent:
                raise
            async with self._connections.lend() as connection:
                await connection.execute(compiled.sql, *arguments)

    async def close(self) -> None:
        await self._connections.close()

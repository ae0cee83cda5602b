"""A hot path's single statements on asyncpg's own connections, compiled once.

Per execution, SQLAlchemy spends about as much of the server's CPU as PostgreSQL spends running
the device check-in's statement: the statement's cache key built anew from its whole tree, a
greenlet switch per call, the row's processing. A hot path's statement is one object built once
(`functools.cache`), so here it is compiled once into PostgreSQL's SQL with the order of its
parameters, and run on a few asyncpg connections of its own (each prepares it once: asyncpg's own
statement cache). Parameters and results still go through the column types' processors, so a
row reads as SQLAlchemy would have returned it.

Only for statements whose parameters are plain values (no expanding `IN`, no per-run rendering or
callable) and whose columns need no codec of SQLAlchemy's (no JSON, INET), on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import JSON, Executable
from sqlalchemy.dialects.postgresql import CIDR, INET
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
# Bounds, as SQLAlchemy's pool had: a statement stuck on a lock or a database that stopped
# answering fails the request instead of holding the process's few connections for ever.
CHECKOUT_TIMEOUT = 30.0
STATEMENT_TIMEOUT = 30.0


def _retryable(error: BaseException) -> bool:
    # asyncpg's DataError (a value it could not encode) is an InterfaceError but not a disconnection.
    return not isinstance(error, asyncpg.exceptions.DataError)


_REQUIRED = object()
# Runs sent together by `Batches` at most; 64 concurrent device connections per process are
# the benchmark's load.
BATCH_LIMIT = 128
T = TypeVar("T")


def _refuse_what_changes_per_run(compiled: SQLCompiler) -> None:
    """What SQLAlchemy decides anew at each execution, or decodes with codecs it installs on its
    own connections, cannot be compiled once and run here."""
    for bind in compiled.binds.values():
        if bind.expanding or bind.literal_execute or bind.callable is not None:
            raise ValueError(
                f"parameter {bind.key!r} is rendered or computed per execution (expanding IN, "
                "literal_execute, a callable): the statement cannot be compiled once"
            )
    for column in compiled._result_columns:
        if isinstance(column.type, (JSON, INET, CIDR)):
            raise ValueError(f"column {column.keyname!r}: its type is decoded by SQLAlchemy's own codecs")


class CompiledStatement:
    """One statement as PostgreSQL's SQL, its parameters in order and its types' processors."""

    def __init__(self, statement: Executable, dialect: Dialect, per_item: tuple[str, ...] = ()) -> None:
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        _refuse_what_changes_per_run(compiled)
        self.sql = compiled.string
        # Per positional parameter ($1, $2, ...): the key a caller binds it by, the value the
        # statement carries itself (a literal's), and its type's processor — so that a call only
        # looks values up.
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
        self.per_item = per_item
        if per_item:
            self.sql = self._batched_sql(compiled, dialect)

    def _batched_sql(self, compiled: SQLCompiler, dialect: Dialect) -> str:
        """The statement run once per item of a batch, LATERAL, its first row each, after the item's
        position (1, 2, ...): each `per_item` parameter's own `$n` now carries an array of the items'
        values, unnested WITH ORDINALITY, and the statement reads the item's value from there."""
        keys = [key for key, _, _ in self._parameters]
        positions = []
        for key in self.per_item:
            if key not in keys:
                raise ValueError(f"the statement has no parameter {key!r} to batch by")
            positions.append(keys.index(key) + 1)
        inner = self.sql
        for position in positions:
            # `$8::VARCHAR` becomes `batch.item_8::VARCHAR`; `$80` is another parameter.
            inner = re.sub(rf"\${position}(?!\d)", f"batch.item_{position}", inner)
        arrays = ", ".join(
            f"${position}::{compiled.binds[compiled.positiontup[position - 1]].type.compile(dialect)}[]"  # type: ignore[index]
            for position in positions
        )
        columns = ", ".join(f"item_{position}" for position in positions)
        # Built from the compiled statement and positions only: no value reaches the SQL text.
        return (
            f"SELECT batch.ordinal, item.* FROM unnest({arrays}) WITH ORDINALITY "  # noqa: S608
            f"AS batch({columns}, ordinal) CROSS JOIN LATERAL "
            f"(SELECT * FROM ({inner}) AS single_run LIMIT 1) AS item"
        )

    def arguments(self, parameters: dict[str, Any]) -> list[Any]:
        arguments = []
        for key, carried, processor in self._parameters:
            value = parameters.get(key, carried)
            if value is _REQUIRED:
                raise ValueError(f"the statement's parameter {key!r} was not given")
            arguments.append(processor(value) if processor is not None else value)
        return arguments

    def batch_arguments(self, items: list[dict[str, Any]]) -> list[Any]:
        """`arguments` for a batch: the `per_item` parameters as arrays of every item's value, the
        others the first item's (shared by the batch)."""
        arguments = self.arguments(items[0])
        for position, (key, _, processor) in enumerate(self._parameters):
            if key in self.per_item:
                values = [item[key] for item in items]
                arguments[position] = [processor(value) for value in values] if processor else values
        return arguments

    def row(self, record: asyncpg.Record | tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            processor(value) if processor is not None else value
            for processor, value in zip(self._result_processors, record, strict=True)
        )


class Connections:
    """At most `size` asyncpg connections, each lent for one statement.

    asyncpg's own pool spends two to four times a check-in statement's round trip on each
    checkout (its holders, timeouts, the reset on release); lending an idle connection here is a
    list pop. A connection that took part in a statement that failed in any way is closed rather
    than lent again, so that no half-finished exchange reaches the next statement. Waiting for one
    and each statement are bounded (CHECKOUT_TIMEOUT, STATEMENT_TIMEOUT); waiters are served in
    order, and a place freed by a dropped connection goes to the first of them."""

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
        if self._closed:
            raise ConnectionError("the database connections are closed")
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_closed():
                return connection
            self._counted -= 1
        if self._counted < self._size:
            self._counted += 1
            return await self._open_in_place()
        waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(CHECKOUT_TIMEOUT):
                handed = await waiter
        except (asyncio.CancelledError, TimeoutError):
            # Handed something just before the cancellation or the timeout: pass it on.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                if (connection := waiter.result()) is not None:
                    self._give_back(connection)
                else:
                    self._free_place()
            raise
        # None: a connection was dropped, and its place is now this caller's to open one in.
        return handed if handed is not None else await self._open_in_place()

    async def _open_in_place(self) -> asyncpg.Connection:
        """A new connection in a place already counted for it (freed again if this fails)."""
        try:
            return await asyncpg.connect(
                self._dsn, server_settings=self._server_settings, command_timeout=STATEMENT_TIMEOUT
            )
        except BaseException:
            self._free_place()
            raise

    def _give_back(self, connection: asyncpg.Connection) -> None:
        if connection.is_closed() or self._closed:
            if not connection.is_closed():
                connection.terminate()
            self._free_place()
        elif not self._hand(connection):
            self._idle.append(connection)

    def _free_place(self) -> None:
        """A place no connection holds any more: the next waiter's to open one in, else free."""
        if self._closed or not self._hand(None):
            self._counted -= 1

    def _hand(self, handed: asyncpg.Connection | None) -> bool:
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


class Batches:
    """Concurrent runs of one single-row statement for different items (`per_item` parameters),
    sent as one statement while others are on their way.

    A run waits in line; at most `senders` tasks send what waits, up to BATCH_LIMIT runs at a
    time, and go on while something waits. A run that finds a sender free is sent on the loop's
    next turn with whatever came in meanwhile: alone when the process is idle, with the others
    under load — one round trip and one execution in PostgreSQL for many instead of each."""

    def __init__(self, statements: DirectStatements, compiled: CompiledStatement, senders: int) -> None:
        self._statements = statements
        self._compiled = compiled
        self._senders_allowed = senders
        self._senders = 0
        self._sender_starting = False
        self._waiting: deque[tuple[dict[str, Any], asyncio.Future[tuple[Any, ...] | None]]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    async def fetch_row(self, parameters: dict[str, Any]) -> tuple[Any, ...] | None:
        for key in self._compiled.per_item:
            if key not in parameters:
                raise ValueError(f"the statement's parameter {key!r} was not given")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, ...] | None] = loop.create_future()
        self._waiting.append((parameters, future))
        if not self._sender_starting and self._senders < self._senders_allowed:
            self._sender_starting = True
            self._senders += 1
            # A context of its own: a sender works for many requests, not the one that started it.
            task = loop.create_task(self._send(), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _send(self) -> None:
        self._sender_starting = False
        try:
            while self._waiting:
                batch: list[tuple[dict[str, Any], asyncio.Future[tuple[Any, ...] | None]]] = []
                while self._waiting and len(batch) < BATCH_LIMIT:
                    parameters, future = self._waiting.popleft()
                    if not future.done():  # a cancelled request's run is not sent
                        batch.append((parameters, future))
                if batch:
                    await self._send_batch(batch)
        finally:
            self._senders -= 1

    async def _send_batch(
        self, batch: list[tuple[dict[str, Any], asyncio.Future[tuple[Any, ...] | None]]]
    ) -> None:
        try:
            arguments = self._compiled.batch_arguments([parameters for parameters, _ in batch])
            records = await self._statements.on_connection(
                lambda connection: connection.fetch(self._compiled.sql, *arguments), retry=True
            )
        except BaseException as error:
            stopped = not isinstance(error, Exception)  # cancelled (the statements closing), or exiting
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        ConnectionError("the database connections are closed") if stopped else error
                    )
            if stopped:
                raise
            return
        rows = {record[0]: self._compiled.row(tuple(record)[1:]) for record in records}
        for ordinal, (_, future) in enumerate(batch, start=1):
            if not future.done():
                future.set_result(rows.get(ordinal))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the database connections are closed"))


class DirectStatements:
    """Connections in autocommit (asyncpg's default outside a transaction) for the hot path's
    single statements, opened when first needed."""

    def __init__(
        self, sqlalchemy_url: str, dialect: Dialect, pool_size: int, server_settings: dict[str, str]
    ) -> None:
        url = make_url(sqlalchemy_url).set(drivername="postgresql")
        self._connections = Connections(url.render_as_string(hide_password=False), pool_size, server_settings)
        self._pool_size = pool_size
        self._dialect = dialect
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, CompiledStatement]] = {}
        self._batches: dict[tuple[int, tuple[str, ...]], Batches] = {}

    def compiled(self, statement: Executable, per_item: tuple[str, ...] = ()) -> CompiledStatement:
        # Keyed by identity, the statement kept alongside so that its id cannot be reused.
        key = (id(statement), per_item)
        found = self._compiled.get(key)
        if found is None:
            found = (statement, CompiledStatement(statement, self._dialect, per_item))
            self._compiled[key] = found
        return found[1]

    async def on_connection(self, use: Callable[[asyncpg.Connection], Awaitable[T]], *, retry: bool) -> T:
        """`use` on a lent connection; once more on another if the connection was found closed
        and `retry` (the statement is safe to send twice)."""
        try:
            async with self._connections.lend() as connection:
                return await use(connection)
        except DISCONNECTED as error:
            if not (retry and _retryable(error)):
                raise
            async with self._connections.lend() as connection:
                return await use(connection)

    async def fetch_row(
        self, statement: Executable, parameters: dict[str, Any], batch_by: tuple[str, ...] = ()
    ) -> tuple[Any, ...] | None:
        """The first row of a read-only statement; sent once more on a connection found closed.
        With `batch_by`, concurrent calls are sent together (`Batches`), each with its own values
        of those parameters and the first call's of the others."""
        if batch_by:
            return await self._batches_of(statement, batch_by).fetch_row(parameters)
        compiled = self.compiled(statement)
        arguments = compiled.arguments(parameters)
        record = await self.on_connection(
            lambda connection: connection.fetchrow(compiled.sql, *arguments), retry=True
        )
        return compiled.row(record) if record is not None else None

    def _batches_of(self, statement: Executable, batch_by: tuple[str, ...]) -> Batches:
        key = (id(statement), batch_by)
        batches = self._batches.get(key)
        if batches is None:
            batches = Batches(self, self.compiled(statement, batch_by), self._pool_size)
            self._batches[key] = batches
        return batches

    async def execute(self, statement: Executable, parameters: dict[str, Any], *, idempotent: bool) -> None:
        """One write that commits by itself; sent once more on a closed connection if `idempotent`."""
        compiled = self.compiled(statement)
        arguments = compiled.arguments(parameters)
        await self.on_connection(
            lambda connection: connection.execute(compiled.sql, *arguments), retry=idempotent
        )

    async def close(self) -> None:
        for batches in self._batches.values():
            await batches.close()
        await self._connections.close()

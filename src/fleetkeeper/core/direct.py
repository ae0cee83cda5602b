"""A hot path's single statements on asyncpg's own connections, compiled once.

Per execution, SQLAlchemy spends about as much of the server's CPU as PostgreSQL spends running
the device check-in's statement: the statement's cache key built anew from its whole tree, a
greenlet switch per call, the row's processing. A hot path's statement is one object built once
(`functools.cache`), so here it is compiled once into PostgreSQL's SQL with the order of its
parameters, and run on a small pool of asyncpg connections (each prepares it once: asyncpg's own
statement cache). Parameters and results still go through the column types' processors, so a
row reads as SQLAlchemy would have returned it.

Only for statements whose parameters are all plain values (no expanding `IN`), on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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


async def _keep_session(connection: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is: its single statements set no session state,
    and the default reset (`RESET ALL`, `UNLISTEN *`, … in one more round trip) doubled the
    statements a check-in sends. asyncpg still rolls back a transaction left open."""


class DirectStatements:
    """A pool of asyncpg connections in autocommit (asyncpg's default outside a transaction) for
    the hot path's single statements, opened when first used."""

    def __init__(
        self, sqlalchemy_url: str, dialect: Dialect, pool_size: int, server_settings: dict[str, str]
    ) -> None:
        url = make_url(sqlalchemy_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._dialect = dialect
        self._pool_size = pool_size
        self._server_settings = server_settings
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
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
        pool = await self._open()
        try:
            record = await pool.fetchrow(compiled.sql, *arguments)
        except DISCONNECTED:
            record = await pool.fetchrow(compiled.sql, *arguments)
        return compiled.row(record) if record is not None else None

    async def execute(self, statement: Executable, parameters: dict[str, Any], *, idempotent: bool) -> None:
        """One write that commits by itself; sent once more on a closed connection if `idempotent`."""
        compiled = self.compiled(statement)
        arguments = compiled.arguments(parameters)
        pool = await self._open()
        try:
            await pool.execute(compiled.sql, *arguments)
        except DISCONNECTED:
            if not idempotent:
                raise
            await pool.execute(compiled.sql, *arguments)

    async def _open(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._pool_size,
                    server_settings=self._server_settings,
                    reset=_keep_session,
                )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

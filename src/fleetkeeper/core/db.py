"""The data layer: one async engine, SQLite (WAL) by default or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Executable, MetaData, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from fleetkeeper.core.direct import DirectStatements

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out, on SQLite too (which stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_LIVENESS = text("SELECT 1")
READ_POOL_SIZE = 20
# Per process; each statement holds a connection for one round trip, so a few keep up with a
# worker, and each further one is another PostgreSQL backend competing with the server for the
# cores, which lengthens the check-ins' latency tail (docs/benchmarks.md, device check-ins).
DIRECT_POOL_SIZE = 4
# Generic plans: PostgreSQL otherwise plans the check-in statement anew at each run, and planning
# it costs several times executing it. Every statement on the read pools is a lookup (or
# write_one's update) by key, whose best plan does not depend on the values.
READ_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    # The driver's own implicit BEGIN is switched off so that _sqlite_begin decides how to begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# An execution option: a transaction begun on a connection with it set takes SQLite's write lock
# up front (`session.connection(execution_options={WRITE_LOCK_UP_FRONT: True})`), as
# `Database.transaction` does. Other databases ignore it.
WRITE_LOCK_UP_FRONT = "fleetkeeper_begin_immediate"


def _sqlite_begin(connection: Any) -> None:
    """Write transactions take SQLite's write lock up front (BEGIN IMMEDIATE): two writers that
    both read before writing would otherwise fail with "database is locked" instead of waiting."""
    immediate = connection.get_execution_options().get(WRITE_LOCK_UP_FRONT, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """The engine and a session factory, shared by both listeners of one process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine: AsyncEngine | None = None
        self._read_sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._direct_statements: DirectStatements | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """For reads, and for callers that manage commits themselves."""
        async with self.sessionmaker() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on success; on SQLite it holds the write lock."""
        async with self.sessionmaker() as session, session.begin():
            await session.connection(execution_options={WRITE_LOCK_UP_FRONT: True})
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """For the few reads of a hot path (a device route), without transaction round trips.

        On PostgreSQL, a session from a second pool (`READ_POOL_SIZE`) in autocommit: no
        BEGIN and ROLLBACK around the statements, and the liveness check is one round trip
        (`SELECT 1`) instead of the pool's three (it wraps its probe in a transaction otherwise).
        Each statement sees what was committed when it started — as in the default READ COMMITTED
        transaction. Nothing may be written through it. On SQLite, the same as `session()`."""
        if not self.url.startswith("postgresql"):
            async with self.session() as session:
                yield session
            return
        async with self._readers()() as session:
            try:
                await session.execute(_LIVENESS)
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                await session.close()  # the dead connection goes; the next statement takes another
            yield session

    async def read_row(
        self, statement: Executable, parameters: dict[str, Any], *, batch_by: tuple[str, ...] = ()
    ) -> tuple[Any, ...] | None:
        """The first row of one read-only statement: a hot path's whole read in one round trip.

        On PostgreSQL the statement is compiled once and run on asyncpg directly (`direct`), with
        no liveness check: a connection found dead (the database restarted) is dropped and the
        statement runs once more, which is safe because it only reads. `statement` must be built
        once (a module constant or a cached function's result), not anew per call.

        `batch_by` names the parameters that tell one caller's run from another's (a device's
        serial): concurrent runs are then sent as one statement (`direct.Batches`), each keeping
        its values of those, all sharing the first run's values of the others (a clock read a
        moment earlier). On SQLite it changes nothing."""
        if not self.url.startswith("postgresql"):
            async with self.session() as session:
                row = (await session.execute(statement, parameters)).first()
            return tuple(row) if row is not None else None
        return await self._direct().fetch_row(statement, parameters, batch_by)

    async def write_one(self, statement: Executable, parameters: dict[str, Any], *, idempotent: bool) -> None:
        """One write statement that stands alone (nothing read before decides it), committed by
        itself: on PostgreSQL one round trip on `read_row`'s autocommit connections instead of
        a checkout probe, BEGIN, the statement and COMMIT; on SQLite a write transaction. An
        `idempotent` statement is sent once more when the connection was found dead."""
        if not self.url.startswith("postgresql"):
            async with self.transaction() as session:
                await session.execute(statement, parameters)
            return
        await self._direct().execute(statement, parameters, idempotent=idempotent)

    def _direct(self) -> DirectStatements:
        if self._direct_statements is None:
            self._direct_statements = DirectStatements(
                self.url, self.engine.dialect, DIRECT_POOL_SIZE, READ_SERVER_SETTINGS
            )
        return self._direct_statements

    def _readers(self) -> async_sessionmaker[AsyncSession]:
        if self._read_sessionmaker is None:
            # No pool_pre_ping: read() checks liveness itself. No overflow either: under more
            # concurrent device requests than pooled connections, overflow connections were opened
            # and closed again for single statements (a PostgreSQL backend started per request);
            # requests wait for a pooled connection instead. Nothing holds one read() session while
            # asking for another.
            self._read_engine = create_async_engine(
                self.url,
                pool_size=READ_POOL_SIZE,
                max_overflow=0,
                isolation_level="AUTOCOMMIT",
                connect_args={"server_settings": READ_SERVER_SETTINGS},
            )
            self._read_sessionmaker = async_sessionmaker(self._read_engine, expire_on_commit=False)
        return self._read_sessionmaker

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._read_engine is not None:
            await self._read_engine.dispose()
        if self._direct_statements is not None:
            await self._direct_statements.close()

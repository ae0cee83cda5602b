"""The hot path's own connections and compiled statements (core/direct.py): bounded, shared
fairly, never lent broken; what cannot be compiled once is refused."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import JSON, bindparam, literal_column, select
from sqlalchemy.dialects import postgresql

from fleetkeeper.access.models import User
from fleetkeeper.core import direct
from fleetkeeper.core.direct import CompiledStatement, Connections
from tests.conftest import POSTGRES_URL


async def _backends(application_name: str) -> int:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    finally:
        await connection.close()
    return int(count)


async def test_more_statements_than_connections_wait_their_turn() -> None:
    connections = Connections(POSTGRES_URL, 3, {"application_name": "fk-direct-turns"})
    try:

        async def one(number: int) -> int:
            async with connections.lend() as connection:
                return int(await connection.fetchval("SELECT $1::int FROM pg_sleep(0.01)", number))

        assert await asyncio.gather(*(one(number) for number in range(30))) == list(range(30))
        assert await _backends("fk-direct-turns") == 3
    finally:
        await connections.close()
    assert await _backends("fk-direct-turns") == 0


async def test_a_failed_statement_closes_its_connection_and_others_go_on() -> None:
    connections = Connections(POSTGRES_URL, 1, {})
    async with connections.lend() as connection:
        first = connection

    async def divide_by_zero() -> None:
        async with connections.lend() as connection:
            assert connection is first
            await connection.fetchval("SELECT 1 / 0")

    with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
        await divide_by_zero()
    assert first.is_closed()
    async with connections.lend() as connection:
        assert connection is not first
        assert await connection.fetchval("SELECT 2") == 2
    await connections.close()


async def test_a_cancelled_wait_loses_no_connection() -> None:
    connections = Connections(POSTGRES_URL, 1, {})
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with connections.lend():
            held.set()
            await release.wait()

    holding = asyncio.create_task(holder())
    await held.wait()

    async def waiter() -> None:
        async with connections.lend():
            pass

    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.05)
    waiting.cancel()
    release.set()
    await holding
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with connections.lend() as connection:  # the one connection is still lent out
        assert await connection.fetchval("SELECT 3") == 3
    await connections.close()
    with pytest.raises(ConnectionError):
        await waiter()


async def test_a_wait_for_a_connection_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "CHECKOUT_TIMEOUT", 0.2)
    connections = Connections(POSTGRES_URL, 1, {})
    release = asyncio.Event()

    async def holder() -> None:
        async with connections.lend():
            await release.wait()

    holding = asyncio.create_task(holder())
    await asyncio.sleep(0.1)

    async def waiter() -> None:
        async with connections.lend():
            pass

    with pytest.raises(TimeoutError):
        await waiter()
    release.set()
    await holding
    await waiter()  # the place was not lost
    await connections.close()


def test_what_sqlalchemy_decides_per_run_is_refused() -> None:
    dialect = postgresql.asyncpg.dialect()
    per_run = select(User.id).where(User.username == bindparam("name", callable_=lambda: "x"))
    with pytest.raises(ValueError, match="per execution"):
        CompiledStatement(per_run, dialect)
    decoded = select(literal_column("'{}'", type_=JSON).label("document"))
    with pytest.raises(ValueError, match="codecs"):
        CompiledStatement(decoded, dialect)

"""The hot path's own connections and compiled statements (core/direct.py): bounded, shared
fairly, never lent broken; what cannot be compiled once is refused."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import JSON, Integer, bindparam, literal, literal_column, select
from sqlalchemy.dialects import postgresql

from fleetkeeper.access.models import User
from fleetkeeper.core import direct
from fleetkeeper.core.direct import CompiledStatement, Connections, DirectStatements
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


# A row for each positive `number`, none otherwise; `scale` is shared by the runs sent together.
_SCALED = select(
    bindparam("number", type_=Integer) * bindparam("scale", type_=Integer),
    bindparam("number", type_=Integer) + literal(0),
).where(bindparam("number", type_=Integer) > 0)
_DIVIDED = select(literal(60) // bindparam("divisor", type_=Integer))


def _direct_statements(name: str) -> DirectStatements:
    return DirectStatements(POSTGRES_URL, postgresql.asyncpg.dialect(), 4, {"application_name": name})


def _count_round_trips(statements: DirectStatements, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    trips: list[int] = []
    on_connection = statements.on_connection

    async def counted(*args: object, **kwargs: object) -> object:
        trips.append(1)
        return await on_connection(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(statements, "on_connection", counted)
    return trips


async def test_concurrent_batched_runs_share_one_round_trip_and_keep_their_own_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statements = _direct_statements("fk-direct-batch")
    trips = _count_round_trips(statements, monkeypatch)
    try:
        numbers = [5, -1, 3, 0, 8, 5, *range(100, 140)]
        rows = await asyncio.gather(
            *(statements.fetch_row(_SCALED, {"number": n, "scale": 10}, ("number",)) for n in numbers)
        )
        assert rows == [(n * 10, n) if n > 0 else None for n in numbers]
        assert len(trips) == 1
        # Alone, a run is sent at once, in a batch of its own.
        assert await statements.fetch_row(_SCALED, {"number": 2, "scale": 3}, ("number",)) == (6, 2)
        assert len(trips) == 2
    finally:
        await statements.close()


async def test_a_batch_that_fails_fails_each_of_its_runs_and_the_next_batch_goes_on() -> None:
    statements = _direct_statements("fk-direct-batch-fail")
    try:
        results = await asyncio.gather(
            *(statements.fetch_row(_DIVIDED, {"divisor": d}, ("divisor",)) for d in (1, 0, 2)),
            return_exceptions=True,
        )
        assert all(isinstance(r, asyncpg.exceptions.DivisionByZeroError) for r in results)
        assert await statements.fetch_row(_DIVIDED, {"divisor": 4}, ("divisor",)) == (15,)
        with pytest.raises(ValueError, match="divisor"):
            await statements.fetch_row(_DIVIDED, {}, ("divisor",))
    finally:
        await statements.close()


async def test_a_cancelled_run_leaves_its_batch_alone_and_close_fails_what_waits() -> None:
    statements = _direct_statements("fk-direct-batch-cancel")
    slow = select(literal_column("pg_sleep(0.2)::text"), bindparam("number", type_=Integer))
    first = asyncio.create_task(statements.fetch_row(slow, {"number": 1}, ("number",)))
    second = asyncio.create_task(statements.fetch_row(slow, {"number": 2}, ("number",)))
    await asyncio.sleep(0.05)  # both sent, together
    first.cancel()
    assert await second == ("", 2)
    with pytest.raises(asyncio.CancelledError):
        await first
    # Senders busy with a slow batch; what waits behind them fails when the statements close.
    busy = [asyncio.create_task(statements.fetch_row(slow, {"number": n}, ("number",))) for n in range(20)]
    await asyncio.sleep(0.05)
    await statements.close()
    results = await asyncio.gather(*busy, return_exceptions=True)
    assert len(results) == 20
    assert all(isinstance(r, ConnectionError) for r in results)


def test_a_batch_names_parameters_the_statement_has() -> None:
    with pytest.raises(ValueError, match="no parameter 'missing'"):
        CompiledStatement(_SCALED, postgresql.asyncpg.dialect(), ("missing",))

"""The data layer on both backends: aware UTC times, and write transactions that serialize."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, select, text

from fleetkeeper.access.models import User
from fleetkeeper.core.db import Database
from fleetkeeper.core.ids import new_id


async def test_times_come_back_aware_utc(database: Database) -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    async with database.transaction() as session:
        session.add(User(id=new_id("usr"), username="tz", created_at=created))
    async with database.session() as session:
        user = (await session.scalars(select(User))).one()
    assert user.created_at.tzinfo is not None
    assert user.created_at == created
    assert user.created_at.utcoffset() == timedelta(0)
    assert user.created_at.astimezone(UTC).hour == 1


async def test_naive_times_are_refused(database: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        async with database.transaction() as session:
            session.add(User(id=new_id("usr"), username="naive", created_at=datetime(2026, 1, 1)))  # noqa: DTZ001


async def test_read_modify_write_transactions_do_not_lose_updates(database: Database) -> None:
    async with database.transaction() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS counter_probe (n INTEGER)"))
        await session.execute(text("DELETE FROM counter_probe"))
        await session.execute(text("INSERT INTO counter_probe VALUES (0)"))

    async def increment() -> None:
        async with database.transaction() as session:
            if database.engine.dialect.name == "postgresql":
                await session.execute(text("LOCK TABLE counter_probe IN EXCLUSIVE MODE"))
            current = (await session.execute(text("SELECT n FROM counter_probe"))).scalar_one()
            await asyncio.sleep(0.01)
            await session.execute(text("UPDATE counter_probe SET n = :n"), {"n": current + 1})

    await asyncio.gather(*(increment() for _ in range(10)))
    async with database.transaction() as session:
        assert (await session.execute(text("SELECT n FROM counter_probe"))).scalar_one() == 10
        await session.execute(text("DROP TABLE counter_probe"))


def test_ids_are_prefixed_unique_and_time_ordered() -> None:
    ids = [new_id("dev") for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(identifier.startswith("dev_") and len(identifier) == 30 for identifier in ids)
    assert new_id("dev") > ids[0]


async def test_reads_survive_connections_the_database_closed(database: Database) -> None:
    """The read pool has no per-checkout probe: a connection the server closed (a restart) is
    dropped and replaced by `read()`'s own probe, `read_row`'s one retry or `write_one`'s."""
    probe = select(text("1"))
    assert (await database.read_row(probe, {})) == (1,)
    async with database.read() as session:
        assert (await session.execute(probe)).scalar() == 1
    if not database.url.startswith("postgresql"):
        return
    async with database.transaction() as session:
        await session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await asyncio.sleep(0.2)  # the terminated backends are gone
    assert (await database.read_row(probe, {})) == (1,)
    async with database.transaction() as session:
        await session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await asyncio.sleep(0.2)
    async with database.read() as session:
        assert (await session.execute(probe)).scalar() == 1
    async with database.transaction() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS seen_probe (n INTEGER)"))
        await session.execute(text("DELETE FROM seen_probe"))
        await session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await asyncio.sleep(0.2)
    await database.write_one(text("INSERT INTO seen_probe VALUES (7)"), {}, idempotent=True)
    async with database.session() as session:
        assert (await session.execute(text("SELECT n FROM seen_probe"))).scalars().all() == [7]


_USER_BY_NAME = select(User.id, User.created_at, User.is_disabled).where(User.username == bindparam("name"))
_USERS_NAMED = select(User.id).where(User.username.in_(bindparam("names", expanding=True)))


async def test_a_hot_statement_reads_as_the_orm_would(database: Database) -> None:
    """`read_row` (on PostgreSQL compiled once and run on asyncpg directly) gives the values the
    ORM gives — aware UTC times included — and refuses what it cannot run."""
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    async with database.transaction() as session:
        session.add(User(id="usr_hot", username="hot", created_at=created))
    for _ in range(2):  # the second run takes the compiled form
        row = await database.read_row(_USER_BY_NAME, {"name": "hot"})
        assert row is not None
        user_id, created_at, disabled = row
        assert (user_id, created_at, disabled) == ("usr_hot", created, False)
        assert created_at.utcoffset() == timedelta(0)
    assert await database.read_row(_USER_BY_NAME, {"name": "nobody"}) is None
    # Sent together with others on PostgreSQL, alone on SQLite: the same rows either way.
    batched = await asyncio.gather(
        *(database.read_row(_USER_BY_NAME, {"name": name}, batch_by=("name",)) for name in ("hot", "nobody"))
    )
    assert batched == [("usr_hot", created, False), None]
    with pytest.raises(Exception, match="name"):
        await database.read_row(_USER_BY_NAME, {})
    if database.url.startswith("postgresql"):
        with pytest.raises(ValueError, match="expanding"):
            await database.read_row(_USERS_NAMED, {"names": ["hot"]})

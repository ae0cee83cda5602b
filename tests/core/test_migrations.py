"""The schema: migrations up and down on both backends, and a server that refuses a stale schema."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from fleetkeeper.core.db import Database
from fleetkeeper.core.migrations import downgrade, head_revisions, migration_state, upgrade_async
from tests.conftest import BACKENDS, FreshDatabaseUrl, run_fleetkeeper_async


async def serve_once(url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return await run_fleetkeeper_async(
        "serve", "--data-dir", str(data_dir), "--database-url", url, "--port", "0", "--device-port", "0"
    )


@pytest.mark.parametrize("backend", BACKENDS)
async def test_upgrade_downgrade_upgrade(backend: str, fresh_database_url: FreshDatabaseUrl) -> None:
    url = await fresh_database_url(backend)
    database = Database(url)
    try:
        assert (await migration_state(database)).empty
        await upgrade_async(url)
        state = await migration_state(database)
        assert state.at_head
        assert state.current == frozenset(head_revisions())
        await asyncio.to_thread(downgrade, url, "base")
        state = await migration_state(database)
        assert not state.at_head
        assert not state.current
        await upgrade_async(url)
        assert (await migration_state(database)).at_head
    finally:
        await database.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_serve_refuses_a_database_behind_and_names_the_fix(
    backend: str, fresh_database_url: FreshDatabaseUrl, tmp_path: Path
) -> None:
    url = await fresh_database_url(backend)
    await upgrade_async(url)
    await asyncio.to_thread(downgrade, url, "base")
    result = await serve_once(url, tmp_path / "d")
    assert result.returncode == 1
    assert "refusing to start" in result.stderr
    assert "fleetkeeper db upgrade" in result.stderr


async def test_serve_refuses_an_empty_postgres_database(
    fresh_database_url: FreshDatabaseUrl, tmp_path: Path
) -> None:
    result = await serve_once(await fresh_database_url("postgresql"), tmp_path / "d")
    assert result.returncode == 1
    assert "no fleetkeeper tables" in result.stderr
    assert "fleetkeeper db upgrade" in result.stderr


async def test_serve_refuses_a_database_from_a_newer_version(
    fresh_database_url: FreshDatabaseUrl, tmp_path: Path
) -> None:
    url = await fresh_database_url("sqlite")
    await upgrade_async(url)
    database = Database(url)
    try:
        async with database.transaction() as session:
            await session.execute(text("UPDATE alembic_version SET version_num = 'fromthefuture'"))
    finally:
        await database.dispose()
    result = await serve_once(url, tmp_path / "d")
    assert result.returncode == 1
    assert "migrated by a newer version" in result.stderr


async def test_serve_says_when_the_database_is_unreachable(tmp_path: Path) -> None:
    result = await serve_once("postgresql://nobody@127.0.0.1:1/none", tmp_path / "d")
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr


@pytest.mark.parametrize("backend", BACKENDS)
async def test_db_upgrade_and_current_commands(backend: str, fresh_database_url: FreshDatabaseUrl) -> None:
    url = await fresh_database_url(backend)
    current = await run_fleetkeeper_async("db", "current", "--database-url", url)
    assert current.returncode == 1
    assert "fleetkeeper db upgrade" in current.stdout
    upgraded = await run_fleetkeeper_async("db", "upgrade", "--database-url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    current = await run_fleetkeeper_async("db", "current", "--database-url", url)
    assert current.returncode == 0
    assert current.stdout.startswith("at head")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_models_match_the_migrations(backend: str, fresh_database_url: FreshDatabaseUrl) -> None:
    """Every table change has its migration: autogenerate finds nothing left to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine import Connection

    from fleetkeeper.core.db import Base
    from fleetkeeper.models import load_all_models

    load_all_models()
    url = await fresh_database_url(backend)
    await upgrade_async(url)

    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    database = Database(url)
    try:
        async with database.engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await database.dispose()

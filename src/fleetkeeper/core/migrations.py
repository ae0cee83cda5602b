"""Alembic, driven from code: the migration scripts ship inside the package."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from fleetkeeper.core.db import Database

SCRIPT_LOCATION = Path(__file__).parent.parent / "migrations"
UPGRADE_COMMAND = "fleetkeeper db upgrade"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["database_url"] = database_url
    return config


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config("")).get_heads())


@dataclass(frozen=True)
class MigrationState:
    current: frozenset[str]
    heads: frozenset[str]
    empty: bool

    @property
    def at_head(self) -> bool:
        return self.current == self.heads

    def describe(self) -> str:
        current = ", ".join(sorted(self.current)) or "none"
        heads = ", ".join(sorted(self.heads))
        if self.empty:
            return f"the database has no fleetkeeper tables; run `{UPGRADE_COMMAND}`"
        known = _known_revisions()
        if not self.current <= known:
            return (
                f"the database is at revision {current}, which this fleetkeeper does not know "
                f"(it needs {heads}); it was migrated by a newer version"
            )
        return (
            f"the database is at revision {current} but this fleetkeeper needs {heads}: "
            f"run `{UPGRADE_COMMAND}`"
        )


def _known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config(""))
    return {revision.revision for revision in script.walk_revisions()}


def _read_state(connection: Connection) -> MigrationState:
    current = frozenset(MigrationContext.configure(connection).get_current_heads())
    empty = not inspect(connection).get_table_names()
    return MigrationState(current=current, heads=frozenset(head_revisions()), empty=empty)


async def migration_state(database: Database) -> MigrationState:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_read_state)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Blocking; call from the CLI or a worker thread, never on the event loop."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, database_url, revision)

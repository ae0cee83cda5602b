"""Background jobs of the server process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text

from fleetkeeper.core.db import Database
from fleetkeeper.core.logging import get_logger

T = TypeVar("T")
log = get_logger(__name__)


async def once_across_replicas(database: Database, name: str, job: Callable[[], Awaitable[T]]) -> T | None:
    """Runs `job` unless another replica is running it now (a PostgreSQL advisory lock). SQLite has
    one process by design, so there it simply runs."""
    if database.engine.dialect.name != "postgresql":
        return await job()
    async with database.engine.connect() as connection:
        locked = await connection.scalar(text("SELECT pg_try_advisory_lock(hashtext(:name))"), {"name": name})
        await connection.commit()
        if not locked:
            return None
        try:
            return await job()
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(hashtext(:name))"), {"name": name})
            await connection.commit()


async def every(interval: float, name: str, job: Callable[[], Awaitable[object]]) -> None:
    """Runs `job` every `interval` seconds until cancelled; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("background job failed", job=name)

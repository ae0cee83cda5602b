"""Dialect helpers shared by the domain's writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession


def upsert(session: AsyncSession) -> Any:
    """The dialect's INSERT with ON CONFLICT (PostgreSQL and SQLite spell it the same way)."""
    return postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def rowcount(result: Any) -> int:
    """Rows written by an INSERT … SELECT or UPDATE (a CursorResult's, typed loosely by execute)."""
    return int(getattr(result, "rowcount", 0) or 0)

"""The two shapes every domain's service repeats: find a row or answer 404, and create a row whose
name or key must be unique or answer 409."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.core.db import Database
from fleetkeeper.core.errors import ConflictError, NotFoundError

Row = TypeVar("Row")


async def get_or_404(session: AsyncSession, model: type[Row], key: Any, not_found: NotFoundError) -> Row:
    """The `model` row with primary key `key`; raises `not_found` when there is none."""
    row = await session.get(model, key)
    if row is None:
        raise not_found
    return row


async def one_or_404(session: AsyncSession, query: Select[Row], not_found: NotFoundError) -> Row:
    """The first row `query` selects; raises `not_found` when it selects none."""
    row = await session.scalar(query)
    if row is None:
        raise not_found
    return row


@asynccontextmanager
async def creating(database: Database, conflict: ConflictError) -> AsyncIterator[AsyncSession]:
    """A transaction that creates something unique: add the row, flush it, record the audit entry;
    a unique constraint it breaks (a name or key taken) rolls it all back and raises `conflict`."""
    try:
        async with database.transaction() as session:
            yield session
    except IntegrityError:
        raise conflict from None

"""Helpers for the audit tests: append records, tamper with rows as an attacker with SQL would,
and an independent implementation of the documented hash (docs/audit.md)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

from sqlalchemy import text

from fleetkeeper.audit import Actor, AuditRecord, record
from fleetkeeper.core.db import Database

ALICE = Actor(kind="user", id="usr_alice", name="alice", address="192.0.2.10")


async def append(
    database: Database, count: int, *, action: str = "test.appended", **kwargs: Any
) -> list[str]:
    """Appends `count` records, each in its own transaction; returns their ids."""
    ids = []
    for number in range(count):
        async with database.transaction() as session:
            entry = await record(
                session,
                actor=kwargs.get("actor", ALICE),
                action=action,
                object_type=kwargs.get("object_type", "thing"),
                object_id=kwargs.get("object_id", f"thing_{number}"),
                outcome=kwargs.get("outcome", "success"),
                details=kwargs.get("details", {"number": number}),
            )
            ids.append(entry.id)
    return ids


async def execute(database: Database, sql: str, **params: Any) -> None:
    async with database.transaction() as session:
        await session.execute(text(sql), params)


async def rows(database: Database) -> list[dict[str, Any]]:
    async with database.session() as session:
        result = await session.execute(AuditRecord.__table__.select().order_by(AuditRecord.seq))
        return [dict(row._mapping) for row in result]


def documented_hash(row: dict[str, Any]) -> str:
    """What an auditor writes from docs/audit.md, without fleetkeeper's code."""
    fields = {key: value for key, value in row.items() if key != "hash"}
    fields["occurred_at"] = row["occurred_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


async def insert_row(database: Database, row: dict[str, Any]) -> None:
    async with database.transaction() as session:
        await session.execute(AuditRecord.__table__.insert().values(**row))

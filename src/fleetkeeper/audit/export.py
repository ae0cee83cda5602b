"""Export as JSON lines or CSV: oldest first, streamed in keyset batches, same filters as search."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Row, select

from fleetkeeper.audit.chain import format_time
from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.audit.service import Actor, AuditFilter, filter_conditions, record
from fleetkeeper.core.db import Database

BATCH_SIZE = 1000
FIELDS = (
    "seq",
    "id",
    "occurred_at",
    "actor_kind",
    "actor_id",
    "actor_name",
    "actor_address",
    "action",
    "object_type",
    "object_id",
    "outcome",
    "details",
    "prev_hash",
    "hash",
)
_COLUMNS = [getattr(AuditRecord, name) for name in FIELDS]
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


ExportFormat = Literal["jsonl", "csv"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("jsonl", "csv")


@dataclass(frozen=True)
class Export:
    body: AsyncIterator[str]
    media_type: str
    filename: str


async def start_export(
    database: Database, actor: Actor, filters: AuditFilter, format: ExportFormat
) -> Export:
    """The matching records, oldest first, to stream out. Reading the log out is itself on record."""
    filter_conditions(filters)  # a malformed filter fails before anything is recorded
    async with database.transaction() as session:
        await record(
            session,
            actor=actor,
            action="audit.exported",
            object_type="audit_log",
            object_id=None,
            details={
                "format": format,
                "filters": {k: str(v) for k, v in vars(filters).items() if v is not None},
            },
        )
    if format == "csv":
        return Export(export_csv(database, filters), "text/csv; charset=utf-8", "fleetkeeper-audit.csv")
    return Export(export_jsonl(database, filters), "application/x-ndjson", "fleetkeeper-audit.jsonl")


async def export_jsonl(
    database: Database, filters: AuditFilter, *, batch_size: int = BATCH_SIZE
) -> AsyncIterator[str]:
    """One JSON object per line; `details` as an object, every other field as stored."""
    async for rows in _batches(database, filter_conditions(filters), batch_size):
        lines = []
        for row in rows:
            item: dict[str, Any] = dict(zip(FIELDS, row, strict=True))
            item["occurred_at"] = format_time(item["occurred_at"])
            item["details"] = json.loads(item["details"])
            lines.append(json.dumps(item, ensure_ascii=False) + "\n")
        yield "".join(lines)


async def export_csv(
    database: Database, filters: AuditFilter, *, batch_size: int = BATCH_SIZE
) -> AsyncIterator[str]:
    """A header line, then one row per record; `details` as its JSON text."""
    # Validated before the header is written, so that a bad filter fails before any output.
    conditions = filter_conditions(filters)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    yield _drain(buffer)
    async for rows in _batches(database, conditions, batch_size):
        for row in rows:
            values = list(row)
            values[2] = format_time(values[2])
            writer.writerow([_neutralized(value) for value in values])
        yield _drain(buffer)


def _neutralized(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


async def _batches(
    database: Database, conditions: list[ColumnElement[bool]], batch_size: int
) -> AsyncIterator[Sequence[Row[Any]]]:
    after: int | None = None
    while True:
        # A short session per batch: a long export holds no transaction open.
        async with database.session() as session:
            query = select(*_COLUMNS).where(*conditions)
            if after is not None:
                query = query.where(AuditRecord.seq > after)
            rows = (await session.execute(query.order_by(AuditRecord.seq).limit(batch_size))).all()
        if rows:
            yield rows
        if len(rows) < batch_size:
            return
        after = rows[-1][0]

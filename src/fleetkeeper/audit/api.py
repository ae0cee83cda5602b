"""Routes for reading the audit log: search, export, and the chain's verification."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator

from fleetkeeper.access.auth import requires
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.audit.context import audit_context
from fleetkeeper.audit.export import ExportFormat, start_export
from fleetkeeper.audit.service import AuditFilter, filter_conditions, search
from fleetkeeper.audit.verification import verify_on_record
from fleetkeeper.core.wire import RowModel, Timestamp

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
Auditor = Annotated[Principal, requires(Permission.AUDIT_READ)]
ShortText = Annotated[str | None, Query(max_length=255)]


def _json_text(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class AuditRecordOut(RowModel):
    seq: int
    id: str
    occurred_at: datetime
    actor_kind: str
    actor_id: str | None
    actor_name: str | None
    actor_address: str | None
    action: str
    object_type: str
    object_id: str | None
    outcome: str
    # Stored as the JSON text the record's hash covers.
    details: Annotated[dict[str, Any], BeforeValidator(_json_text)]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditRecordOut]
    next_cursor: str | None


class Verification(BaseModel):
    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    checkpoint_id: str | None
    bad_seq: int | None
    bad_id: str | None
    reason: str | None


def _filters(
    actor: ShortText = None,
    action: ShortText = None,
    object_type: ShortText = None,
    object_id: ShortText = None,
    outcome: ShortText = None,
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
) -> AuditFilter:
    """The query parameters both search and export take; a malformed one fails before any work."""
    filters = AuditFilter(actor, action, object_type, object_id, outcome, since, until)
    filter_conditions(filters)
    return filters


Filters = Annotated[AuditFilter, Depends(_filters)]


@router.get("/records")
async def list_records(
    principal: Auditor,
    request: Request,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> AuditPage:
    """Newest first; filters combine. `action` ending in `.*` matches a prefix (`user.*`)."""
    async with audit_context(request).database.session() as session:
        page = await search(session, filters, limit=limit, cursor=cursor)
    return AuditPage(
        items=[AuditRecordOut.model_validate(row) for row in page.items], next_cursor=page.next_cursor
    )


@router.get("/export", response_class=StreamingResponse)
async def export(
    principal: Auditor,
    request: Request,
    filters: Filters,
    format: Annotated[ExportFormat, Query()] = "jsonl",
) -> StreamingResponse:
    """The matching records, oldest first, streamed as JSON lines or CSV. The export is itself audited."""
    export = await start_export(audit_context(request).database, principal.actor, filters, format)
    return StreamingResponse(
        export.body,
        media_type=export.media_type,
        headers={"content-disposition": f'attachment; filename="{export.filename}"'},
    )


@router.get("/verification")
async def verification(principal: Auditor, request: Request) -> Verification:
    """Recomputes the whole chain (from the newest retention checkpoint) and names the first record
    that does not fit. The result is put on record (`audit.verified`)."""
    runtime = audit_context(request)
    result = await verify_on_record(runtime.database, runtime.settings.data_dir, principal.actor)
    return Verification(
        ok=result.ok,
        checked=result.checked,
        first_seq=result.first_seq,
        last_seq=result.last_seq,
        checkpoint_id=result.checkpoint_id,
        bad_seq=result.bad_seq,
        bad_id=result.bad_id,
        reason=result.reason,
    )

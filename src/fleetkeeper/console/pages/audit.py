"""The audit log: search with filters, one record's details, export, and the chain's verification."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.audit.export import EXPORT_FORMATS, ExportFormat, start_export
from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.audit.service import OUTCOMES, AuditFilter, filter_conditions, search
from fleetkeeper.audit.verification import last_verification, latest_checkpoint, verify_on_record
from fleetkeeper.console.context import console_context
from fleetkeeper.console.render import is_htmx, render
from fleetkeeper.console.session import page
from fleetkeeper.core.errors import NotFoundError, ProblemError
from fleetkeeper.core.lookups import get_or_404

router = APIRouter(include_in_schema=False)
Auditor = Annotated[Principal, page(Permission.AUDIT_READ)]
PAGE_SIZE = 50
FILTER_NAMES = ("actor", "action", "object_type", "object_id", "outcome", "since", "until")


def _moment(name: str, value: str) -> datetime | None:
    """A datetime-local field's value (no zone: the console shows and takes UTC) or an ISO time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ProblemError(f"{name} is not a date and time", code="invalid_filter") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _filters(request: Request) -> tuple[AuditFilter, dict[str, str]]:
    """The filters of the query string (as the form sent them), checked like the API checks them."""
    given = {name: request.query_params.get(name, "").strip()[:255] for name in FILTER_NAMES}
    filters = AuditFilter(
        actor=given["actor"] or None,
        action=given["action"] or None,
        object_type=given["object_type"] or None,
        object_id=given["object_id"] or None,
        outcome=given["outcome"] or None,
        since=_moment("since", given["since"]),
        until=_moment("until", given["until"]),
    )
    filter_conditions(filters)
    return filters, given


@router.get("/audit")
async def audit_log(
    request: Request, principal: Auditor, cursor: Annotated[str | None, Query(max_length=100)] = None
) -> Response:
    filters, given = _filters(request)
    chosen = {name: value for name, value in given.items() if value}
    async with console_context(request).database.session() as session:
        found = await search(session, filters, limit=PAGE_SIZE, cursor=cursor or None)
        verification = await last_verification(session)
        checkpoint = await latest_checkpoint(session)
    return render(
        request,
        "audit/index.html",
        principal,
        records=found.items,
        next_query=urlencode({**chosen, "cursor": found.next_cursor}) if found.next_cursor else "",
        first_query=urlencode(chosen),
        given=given,
        filtered=bool(chosen),
        outcomes=OUTCOMES,
        export_queries={fmt: urlencode({**chosen, "format": fmt}) for fmt in EXPORT_FORMATS},
        verification=verification,
        checkpoint=checkpoint,
        paged=cursor is not None,
    )


@router.get("/audit/export")
async def export(
    request: Request, principal: Auditor, format: Annotated[ExportFormat, Query()] = "jsonl"
) -> Response:
    """The same export as the API's, for a browser: a download authenticated by the cookie."""
    filters, _ = _filters(request)
    found = await start_export(console_context(request).database, principal.actor, filters, format)
    return StreamingResponse(
        found.body,
        media_type=found.media_type,
        headers={"content-disposition": f'attachment; filename="{found.filename}"'},
    )


@router.post("/audit/verification")
async def verify_chain(request: Request, principal: Auditor) -> Response:
    runtime = console_context(request)
    result = await verify_on_record(runtime.database, runtime.settings.data_dir, principal.actor)
    async with runtime.database.session() as session:
        verification = await last_verification(session)
        checkpoint = await latest_checkpoint(session)
    if not is_htmx(request):
        return RedirectResponse("/audit", status_code=303)
    return render(
        request,
        "audit/verification.html",
        principal,
        result=asdict(result),
        verification=verification,
        checkpoint=checkpoint,
    )


@router.get("/audit/records/{seq}")
async def audit_record(
    request: Request, principal: Auditor, seq: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> Response:
    not_found = NotFoundError(f"no audit record {seq}", code="audit_record_not_found")
    async with console_context(request).database.session() as session:
        row = await get_or_404(session, AuditRecord, seq, not_found)
    details = json.dumps(row.details_object(), indent=2, ensure_ascii=False, sort_keys=True)
    return render(request, "audit/record.html", principal, row=row, details=details)

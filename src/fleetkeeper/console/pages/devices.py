"""Devices: the searchable list and one device's page (identity, inventory, certificates,
deployments, audit trail) with the actions the user's role allows on it."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import RedirectResponse, Response

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.audit.service import AuditFilter, search
from fleetkeeper.console.context import console_context
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.deployments import listing as deployments
from fleetkeeper.devices import enrollment_decisions, service
from fleetkeeper.devices.filters import FilterError
from fleetkeeper.devices.models import DEVICE_STATUSES, Device

router = APIRouter(include_in_schema=False)
Reader = Annotated[Principal, page(Permission.DEVICES_READ)]
Manager = Annotated[Principal, page(Permission.DEVICES_MANAGE)]
PAGE_SIZE = 50
SORTS: dict[str, str] = {
    "id": "Device",
    "device_type": "Type",
    "status": "Status",
    "last_seen": "Last seen",
    "created_at": "Created",
}


@router.get("/devices")
async def device_list(
    request: Request,
    principal: Reader,
    filter: Annotated[str, Query(max_length=2000)] = "",
    status: Annotated[str, Query(max_length=20)] = "",
    sort: Annotated[service.SortKey, Query()] = "created_at",
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    direction: Annotated[Literal["next", "previous"], Query()] = "next",
    limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
) -> Response:
    """The filter's syntax errors are shown with their column, on the page, with status 422."""
    status = status if status in DEVICE_STATUSES else ""
    filter = filter.strip()  # the caret under the echoed filter counts from its first character
    filter_error: FilterError | None = None
    listing = service.DevicePage([], None)
    async with console_context(request).database.session() as session:
        try:
            listing = await service.list_devices(
                session,
                principal,
                filter_expression=filter or None,
                sort=sort,
                descending=order == "desc",
                limit=limit,
                cursor=cursor,
                backward=direction == "previous",
                extra=Device.status == status if status else None,
            )
        except FilterError as exc:
            filter_error = exc
    query = {"filter": filter, "status": status, "sort": sort, "order": order, "limit": limit}
    return render(
        request,
        "devices/list.html",
        principal,
        status=422 if filter_error else 200,
        devices=listing.items,
        next_cursor=listing.next_cursor,
        previous_cursor=listing.previous_cursor,
        filter_error=filter_error,
        query=query,
        sorts=SORTS,
        statuses=DEVICE_STATUSES,
        is_online=service.is_online,
    )


def inventory_rows(report: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every value a device reported under its dotted path; lists shown as JSON, as they came."""
    if isinstance(report, dict):
        rows: list[tuple[str, str]] = []
        for key, value in report.items():
            rows += inventory_rows(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(report, str):
        return [(prefix, report)]
    return [(prefix, json.dumps(report))]


@router.get("/devices/{device_id}")
async def device_detail(request: Request, principal: Reader, device_id: str) -> Response:
    async with console_context(request).database.session() as session:
        device = await service.get_permitted_device(session, principal, device_id, Permission.DEVICES_READ)
        groups = service.shown_group_names(principal, await service.device_group_names(session, device_id))
        scope_groups = await service.device_group_names(session, device_id, as_scope=True)
        certificates = await service.certificates_of(session, device_id)
        history = await deployments.deployments_of_device(session, principal, device_id, limit=20)
        audit_trail = None
        if principal.can(Permission.AUDIT_READ):
            audit_trail = await search(
                session, AuditFilter(object_type="device", object_id=device_id), limit=20
            )
    return render(
        request,
        "devices/detail.html",
        principal,
        device=device,
        online=service.is_online(device),
        groups=groups,
        certificates=certificates,
        inventory=inventory_rows(device.inventory or {}),
        deployments=history.items,
        audit_trail=audit_trail.items if audit_trail else None,
        may_manage=principal.can(Permission.DEVICES_MANAGE, scope_groups),
        may_connect=principal.can(Permission.DEVICES_CONNECT, scope_groups),
        tags_text="\n".join(f"{key}={value}" for key, value in sorted(device.tags.items())),
    )


@router.post("/devices/{device_id}/decommission")
async def decommission(request: Request, principal: Manager, device_id: str) -> Response:
    device = await service.get_manageable_device(console_context(request).database, principal, device_id)
    await enrollment_decisions.decommission(console_context(request), principal, device)
    return RedirectResponse(f"/devices/{device.id}", status_code=303)


def parse_tags(text: str) -> dict[str, str]:
    """One `key=value` a line, as the tags form shows them; the service checks keys and values."""
    tags: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition("=")
        if not separator:
            raise ProblemError(f"line {number}: write each tag as key=value", code="invalid_tags", status=422)
        tags[key.strip()] = value.strip()
    return tags


@router.post("/devices/{device_id}/tags")
async def set_tags(
    request: Request, principal: Manager, device_id: str, tags: Annotated[str, Form(max_length=20000)] = ""
) -> Response:
    device = await service.set_tags(console_context(request).database, principal, device_id, parse_tags(tags))
    return RedirectResponse(f"/devices/{device.id}", status_code=303)

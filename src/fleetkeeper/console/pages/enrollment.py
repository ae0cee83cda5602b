"""The enrollment queue: pending devices to accept (optionally into a group) or reject,
pre-authorization of a device's key, and batch enrollment tokens (their secret shown once)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import RedirectResponse, Response

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.console.context import console_context
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page
from fleetkeeper.devices import enrollment_decisions, enrollment_tokens, service
from fleetkeeper.devices.models import Device, EnrollmentToken

router = APIRouter(include_in_schema=False)
Manager = Annotated[Principal, page(Permission.DEVICES_MANAGE)]
QUEUE_SIZE = 200
NOTICES = {
    "accepted": "Accepted device {}.",
    "rejected": "Rejected device {}.",
    "preauthorized": "Pre-authorized device {}: it is accepted when it first enrolls.",
    "revoked": "Revoked enrollment token {}.",
}


async def _queue_page(
    request: Request,
    principal: Principal,
    *,
    notice: str = "",
    created: tuple[EnrollmentToken, str] | None = None,
    status: int = 200,
) -> Response:
    async with console_context(request).database.session() as session:
        pending = await service.list_devices(
            session, principal, sort="created_at", limit=QUEUE_SIZE, extra=Device.status == "pending"
        )
        # Only the groups the operator sees (their devices:read), as GET /api/v1/device-groups.
        groups = await service.visible_groups(session, principal)
        tokens = await enrollment_tokens.list_tokens(session, principal)
    return render(
        request,
        "enrollment/queue.html",
        principal,
        status=status,
        pending=pending.items,
        more_pending=pending.next_cursor is not None,
        # Offered to put devices in: those of them that are static and theirs to manage.
        static_groups=[
            group.name
            for group in groups
            if group.kind == "static" and principal.can(Permission.DEVICES_MANAGE, [group.name])
        ],
        group_names={group.id: group.name for group in groups},
        tokens=tokens,
        created=created,
        notice=notice,
    )


@router.get("/enrollment")
async def queue(
    request: Request,
    principal: Manager,
    done: Annotated[str, Query(max_length=20)] = "",
    device: Annotated[str, Query(max_length=64, pattern=r"^[a-z]+_[0-9a-z]+$")] = "",
) -> Response:
    template = NOTICES.get(done)
    return await _queue_page(request, principal, notice=template.format(device) if template else "")


def _done(what: str, object_id: str) -> Response:
    return RedirectResponse(f"/enrollment?done={what}&device={object_id}", status_code=303)


@router.post("/enrollment/{device_id}/accept")
async def accept(
    request: Request, principal: Manager, device_id: str, group: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    device = await service.get_manageable_device(console_context(request).database, principal, device_id)
    await enrollment_decisions.accept_into_group(console_context(request), principal, device, group or None)
    return _done("accepted", device.id)


@router.post("/enrollment/{device_id}/reject")
async def reject(request: Request, principal: Manager, device_id: str) -> Response:
    device = await service.get_manageable_device(console_context(request).database, principal, device_id)
    await enrollment_decisions.decide(console_context(request), principal, device, accept=False)
    return _done("rejected", device.id)


@router.post("/enrollment/preauthorize")
async def preauthorize(
    request: Request,
    principal: Manager,
    device_type: Annotated[str, Form(max_length=64)],
    public_key: Annotated[str, Form(max_length=4096)],
    serial: Annotated[str, Form(max_length=128)] = "",
    mac: Annotated[str, Form(max_length=32)] = "",
    group: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    identity = {
        "device_type": device_type.strip(),
        "serial": serial.strip() or None,
        "mac": mac.strip() or None,
    }
    device = await enrollment_decisions.preauthorize(
        console_context(request), principal, identity, public_key.strip(), [group] if group else []
    )
    return _done("preauthorized", device.id)


@router.post("/enrollment/tokens")
async def create_token(
    request: Request,
    principal: Manager,
    name: Annotated[str, Form(min_length=1, max_length=100)],
    expires_in_hours: Annotated[int, Form(ge=1, le=24 * 90)] = 24,
    max_uses: Annotated[int, Form(ge=1, le=1_000_000)] = 100,
    auto_accept: Annotated[bool, Form()] = False,
    group: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """Answers with the page itself (not a redirect), so that the secret is shown once and never
    travels in a URL."""
    created = await enrollment_tokens.create_token(
        console_context(request),
        principal,
        name=name.strip(),
        expires_in=timedelta(hours=expires_in_hours),
        max_uses=max_uses,
        auto_accept=auto_accept,
        group_name=group or None,
    )
    response = await _queue_page(request, principal, created=created)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/enrollment/tokens/{token_id}/revoke")
async def revoke_token(request: Request, principal: Manager, token_id: str) -> Response:
    await enrollment_tokens.revoke_token(console_context(request), principal, token_id)
    return _done("revoked", token_id)

"""Management routes for devices: the enrollment queue, inventory, tags, groups, tokens, the CA."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from fleetkeeper.access.auth import PUBLIC, requires
from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.devices import enrollment_decisions, enrollment_tokens, renewal, service
from fleetkeeper.devices.context import devices_context
from fleetkeeper.devices.models import Device
from fleetkeeper.devices.schemas import (
    CertificateInfo,
    CreatedToken,
    DeviceDetail,
    DeviceOut,
    DevicePageOut,
    GroupOut,
    GroupRequest,
    MembersRequest,
    PreauthorizeRequest,
    TagsRequest,
    TokenOut,
    TokenRequest,
)

router = APIRouter(prefix="/api/v1", tags=["devices"])
Reader = Annotated[Principal, requires(Permission.DEVICES_READ)]
Manager = Annotated[Principal, requires(Permission.DEVICES_MANAGE)]


@router.get("/devices")
async def list_devices(
    principal: Reader,
    request: Request,
    filter: Annotated[str | None, Query(max_length=2000)] = None,
    status: Annotated[
        Literal["pending", "preauthorized", "accepted", "rejected", "decommissioned"] | None, Query()
    ] = None,
    sort: Annotated[service.SortKey, Query()] = "created_at",
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> DevicePageOut:
    """Devices the caller may read, filtered with the filter language (docs/filters.md);
    `status=pending` is the enrollment queue."""
    async with devices_context(request).database.session() as session:
        page = await service.list_devices(
            session,
            principal,
            filter_expression=filter,
            sort=sort,
            descending=order == "desc",
            limit=limit,
            cursor=cursor,
            extra=Device.status == status if status else None,
        )
    return DevicePageOut(
        items=[DeviceOut.model_validate(device) for device in page.items], next_cursor=page.next_cursor
    )


@router.get("/devices/{device_id}")
async def get_device(device_id: str, principal: Reader, request: Request) -> DeviceDetail:
    async with devices_context(request).database.session() as session:
        device = await service.get_permitted_device(session, principal, device_id, Permission.DEVICES_READ)
        groups = service.shown_group_names(principal, await service.device_group_names(session, device_id))
        certificates = await service.certificates_of(session, device_id)
    return DeviceDetail.from_row(
        device, groups=groups, certificates=[CertificateInfo.model_validate(row) for row in certificates]
    )


@router.post("/devices/{device_id}/accept")
async def accept(device_id: str, principal: Manager, request: Request) -> DeviceOut:
    """Accepts a pending enrollment: the device gets its certificate when it asks next."""
    device = await service.get_manageable_device(devices_context(request).database, principal, device_id)
    return DeviceOut.model_validate(
        await enrollment_decisions.decide(devices_context(request), principal, device, accept=True)
    )


@router.post("/devices/{device_id}/reject")
async def reject(device_id: str, principal: Manager, request: Request) -> DeviceOut:
    device = await service.get_manageable_device(devices_context(request).database, principal, device_id)
    return DeviceOut.model_validate(
        await enrollment_decisions.decide(devices_context(request), principal, device, accept=False)
    )


@router.post("/devices/{device_id}/decommission")
async def decommission(device_id: str, principal: Manager, request: Request) -> DeviceOut:
    """Retires the device: its certificates are revoked and the CRL is published at once."""
    device = await service.get_manageable_device(devices_context(request).database, principal, device_id)
    await enrollment_decisions.decommission(devices_context(request), principal, device)
    async with devices_context(request).database.session() as session:
        return DeviceOut.model_validate(await service.get_device_unchecked(session, device_id))


@router.post("/devices/{device_id}/key-rotation/approve", status_code=204)
async def approve_key_rotation(device_id: str, principal: Manager, request: Request) -> Response:
    device = await service.get_manageable_device(devices_context(request).database, principal, device_id)
    await renewal.approve_rotation(devices_context(request), principal, device)
    return Response(status_code=204)


@router.put("/devices/{device_id}/tags")
async def set_tags(device_id: str, body: TagsRequest, principal: Manager, request: Request) -> DeviceOut:
    """Replaces the operator's tags (filterable as `tag.<key>`)."""
    return DeviceOut.model_validate(
        await service.set_tags(devices_context(request).database, principal, device_id, body.tags)
    )


@router.post("/devices/preauthorize", status_code=201)
async def preauthorize(body: PreauthorizeRequest, principal: Manager, request: Request) -> DeviceOut:
    """Registers a device's identity and public key ahead: it is accepted at its first enrollment."""
    identity = {
        "device_type": body.device_type,
        "serial": body.serial,
        "mac": body.mac,
        "attributes": body.attributes,
    }
    device = await enrollment_decisions.preauthorize(
        devices_context(request), principal, identity, body.public_key, body.groups
    )
    return DeviceOut.model_validate(device)


@router.get("/enrollment-tokens")
async def list_tokens(principal: Manager, request: Request) -> list[TokenOut]:
    async with devices_context(request).database.session() as session:
        return [
            TokenOut.model_validate(row) for row in await enrollment_tokens.list_tokens(session, principal)
        ]


@router.post("/enrollment-tokens", status_code=201)
async def create_token(body: TokenRequest, principal: Manager, request: Request) -> CreatedToken:
    """A batch enrollment token for factory provisioning: expiring, limited uses, optionally
    accepting its devices straight into a group."""
    token, secret = await enrollment_tokens.create_token(
        devices_context(request),
        principal,
        name=body.name,
        expires_in=timedelta(hours=body.expires_in_hours),
        max_uses=body.max_uses,
        auto_accept=body.auto_accept,
        group_name=body.group,
    )
    return CreatedToken(token=TokenOut.model_validate(token), secret=secret)


@router.delete("/enrollment-tokens/{token_id}", status_code=204)
async def revoke_token(token_id: str, principal: Manager, request: Request) -> Response:
    await enrollment_tokens.revoke_token(devices_context(request), principal, token_id)
    return Response(status_code=204)


@router.get("/device-groups")
async def list_groups(principal: Reader, request: Request) -> list[GroupOut]:
    """The groups the caller sees: every group with devices:read unscoped, else those it names."""
    async with devices_context(request).database.session() as session:
        return [GroupOut.model_validate(group) for group in await service.visible_groups(session, principal)]


@router.post("/device-groups", status_code=201)
async def create_group(body: GroupRequest, principal: Manager, request: Request) -> GroupOut:
    group = await service.create_group(
        devices_context(request).database,
        principal,
        name=body.name,
        description=body.description,
        filter_expression=body.filter,
    )
    return GroupOut.model_validate(group)


@router.delete("/device-groups/{name}", status_code=204)
async def delete_group(name: str, principal: Manager, request: Request) -> Response:
    await service.delete_group(devices_context(request).database, principal, name)
    return Response(status_code=204)


@router.get("/device-groups/{name}/devices")
async def group_devices(
    name: str,
    principal: Reader,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> DevicePageOut:
    """A group's devices (a dynamic group's filter evaluated now), as far as the caller may read."""
    async with devices_context(request).database.session() as session:
        group = await service.visible_group(session, principal, name)
        page = await service.list_devices(
            session, principal, limit=limit, cursor=cursor, extra=service.group_condition(group)
        )
    return DevicePageOut(
        items=[DeviceOut.model_validate(device) for device in page.items], next_cursor=page.next_cursor
    )


@router.post("/device-groups/{name}/devices", status_code=204)
async def add_members(name: str, body: MembersRequest, principal: Manager, request: Request) -> Response:
    await service.set_membership(devices_context(request).database, principal, name, body.devices, add=True)
    return Response(status_code=204)


@router.delete("/device-groups/{name}/devices", status_code=204)
async def remove_members(name: str, body: MembersRequest, principal: Manager, request: Request) -> Response:
    await service.set_membership(devices_context(request).database, principal, name, body.devices, add=False)
    return Response(status_code=204)


class PemResponse(Response):
    media_type = "application/x-pem-file"


@router.get("/pki/ca.pem", dependencies=[PUBLIC], response_class=PemResponse)
async def ca_certificate(request: Request) -> Response:
    """The fleet CA's certificate, which devices trust for the device listener."""
    return PemResponse(devices_context(request).pki.ca_cert.read_bytes())


@router.get("/pki/crl.pem", dependencies=[PUBLIC], response_class=PemResponse)
async def crl(request: Request) -> Response:
    """The fleet CA's certificate revocation list (PEM)."""
    return PemResponse(devices_context(request).pki.crl.read_bytes())

"""Wire types of the devices APIs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from fleetkeeper.core.wire import RequestBody
from fleetkeeper.devices.models import Device, DeviceCertificate, DeviceGroup, EnrollmentToken
from fleetkeeper.devices.scopes import device_reported_fields


class Envelope(RequestBody):
    payload: Annotated[str, StringConstraints(min_length=1, max_length=24 * 1024)]
    signature: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class EnrollmentOut(BaseModel):
    device_id: str
    status: str
    retry_after: int | None = None
    certificate: str | None = None
    ca_certificate: str | None = None
    not_after: str | None = None


class CertificateOut(BaseModel):
    certificate: str
    ca_certificate: str
    not_after: datetime


class RotationPending(BaseModel):
    status: str = "pending_approval"


class CertificateInfo(BaseModel):
    serial: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None

    @classmethod
    def of(cls, row: DeviceCertificate) -> CertificateInfo:
        return cls(
            serial=row.serial,
            not_before=row.not_before,
            not_after=row.not_after,
            issued_at=row.issued_at,
            revoked_at=row.revoked_at,
            revocation_reason=row.revocation_reason,
        )


class DeviceOut(BaseModel):
    id: str
    status: str
    device_type: str
    serial: str | None
    mac: str | None
    identity: dict[str, Any]
    key_fingerprint: str
    key_rotation_pending: bool
    enrolled_via: str
    created_at: datetime
    decided_at: datetime | None
    last_seen_at: datetime | None
    inventory_changed_at: datetime | None
    tags: dict[str, str]

    @classmethod
    def of(cls, device: Device) -> DeviceOut:
        return cls(
            id=device.id,
            status=device.status,
            device_type=device.device_type,
            serial=device.serial,
            mac=device.mac,
            identity=device.identity,
            key_fingerprint=device.key_fingerprint,
            key_rotation_pending=device.pending_public_key_pem is not None,
            enrolled_via=device.enrolled_via,
            created_at=device.created_at,
            decided_at=device.decided_at,
            last_seen_at=device.last_seen_at,
            inventory_changed_at=device.inventory_changed_at,
            tags=device.tags,
        )


class DeviceDetail(DeviceOut):
    inventory: dict[str, Any]
    groups: list[str]
    certificates: list[CertificateInfo]


class DevicePageOut(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None


class PreauthorizeRequest(RequestBody):
    device_type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    serial: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    mac: Annotated[str, StringConstraints(max_length=32)] | None = None
    attributes: dict[str, str] = Field(default_factory=dict, max_length=50)
    public_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    groups: list[Annotated[str, StringConstraints(max_length=128)]] = Field(
        default_factory=list, max_length=20
    )


class TagsRequest(RequestBody):
    tags: dict[str, str] = Field(max_length=50)


class TokenRequest(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    expires_in_hours: int = Field(default=24, ge=1, le=24 * 90)
    max_uses: int = Field(default=100, ge=1, le=1_000_000)
    auto_accept: bool = False
    group: Annotated[str, StringConstraints(max_length=128)] | None = None


class TokenOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int
    auto_accept: bool
    group_id: str | None
    revoked: bool

    @classmethod
    def of(cls, token: EnrollmentToken) -> TokenOut:
        return cls(
            id=token.id,
            name=token.name,
            created_at=token.created_at,
            expires_at=token.expires_at,
            max_uses=token.max_uses,
            uses=token.uses,
            auto_accept=token.auto_accept,
            group_id=token.group_id,
            revoked=token.revoked_at is not None,
        )


class CreatedToken(BaseModel):
    token: TokenOut
    secret: str = Field(description="give it to the devices (`--token`); shown only in this response")


class GroupRequest(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    filter: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = Field(
        default=None, description="a filter expression makes a dynamic group; none, a static one"
    )


class GroupOut(BaseModel):
    id: str
    name: str
    description: str
    kind: str
    filter: str | None
    usable_as_scope: bool = Field(
        description="a role scoped to this group reaches its devices; false when the filter reads "
        "what devices report themselves (docs/access.md, Scopes)"
    )
    device_reported_fields: list[str] = Field(description="the fields of the filter that devices decide")

    @classmethod
    def of(cls, group: DeviceGroup) -> GroupOut:
        reported = device_reported_fields(group)
        return cls(
            id=group.id,
            name=group.name,
            description=group.description,
            kind=group.kind,
            filter=group.filter,
            usable_as_scope=not reported,
            device_reported_fields=reported,
        )


class MembersRequest(RequestBody):
    devices: list[Annotated[str, StringConstraints(max_length=40)]] = Field(min_length=1, max_length=1000)

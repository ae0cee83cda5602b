"""Wire types of the devices APIs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, model_validator

from fleetkeeper.core.wire import IsSet, RequestBody, RowModel, RowWith
from fleetkeeper.devices.models import DeviceGroup
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


class CertificateInfo(RowModel):
    serial: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None


class DeviceOut(RowModel):
    id: str
    status: str
    device_type: str
    serial: str | None
    mac: str | None
    identity: dict[str, Any]
    key_fingerprint: str
    key_rotation_pending: IsSet = Field(validation_alias="pending_public_key_pem")
    enrolled_via: str
    created_at: datetime
    decided_at: datetime | None
    last_seen_at: datetime | None
    inventory_changed_at: datetime | None
    tags: dict[str, str]


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


class TokenOut(RowModel):
    id: str
    name: str
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int
    auto_accept: bool
    group_id: str | None
    revoked: IsSet = Field(validation_alias="revoked_at")


class CreatedToken(BaseModel):
    token: TokenOut
    secret: str = Field(description="give it to the devices (`--token`); shown only in this response")


class GroupRequest(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    filter: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = Field(
        default=None, description="a filter expression makes a dynamic group; none, a static one"
    )


class GroupOut(RowModel):
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

    @model_validator(mode="before")
    @classmethod
    def _judge_scope_fitness(cls, data: Any) -> Any:
        if not isinstance(data, DeviceGroup):
            return data
        reported = device_reported_fields(data)
        return RowWith(data, {"usable_as_scope": not reported, "device_reported_fields": reported})


class MembersRequest(RequestBody):
    devices: list[Annotated[str, StringConstraints(max_length=40)]] = Field(min_length=1, max_length=1000)

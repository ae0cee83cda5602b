"""Tables of the devices domain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeeper.core.db import Base, UTCDateTime, utcnow

# pending → accepted | rejected; preauthorized → accepted at first contact; accepted → decommissioned
DEVICE_STATUSES = ("pending", "preauthorized", "accepted", "rejected", "decommissioned")


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    device_type: Mapped[str] = mapped_column(String(64), index=True)
    serial: Mapped[str | None] = mapped_column(String(128), index=True)
    mac: Mapped[str | None] = mapped_column(String(32))
    # What the device said about itself when it enrolled (device type, serial, MAC, extra attributes).
    identity: Mapped[dict[str, Any]] = mapped_column(JSON)
    public_key_pem: Mapped[str] = mapped_column(Text)
    # SHA-256 of the key's SubjectPublicKeyInfo: one key, one device.
    key_fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    # A new key waiting for an operator's approval (key rotation under the "approval" policy).
    pending_public_key_pem: Mapped[str | None] = mapped_column(Text)
    enrolled_via: Mapped[str] = mapped_column(String(16))  # request | preauthorized | token
    enrollment_token_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(40))
    inventory: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    inventory_hash: Mapped[str | None] = mapped_column(String(64))
    inventory_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)


class DeviceAttribute(Base):
    """Every scalar of a device's inventory and tags, one row each, so that filters run on indexes.

    Keys are dotted paths (`os.version`, `tag.site`); a value is kept as text and, when it is a
    number, as a number too, so that `kernel_major > 5` compares numbers.
    """

    __tablename__ = "device_attributes"
    __table_args__ = (
        Index("ix_device_attributes_key_text", "key", "value_text"),
        Index("ix_device_attributes_key_num", "key", "value_num"),
    )

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value_text: Mapped[str | None] = mapped_column(String(1024))
    value_num: Mapped[float | None] = mapped_column(Float)


class DeviceCertificate(Base):
    __tablename__ = "device_certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # hex
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    pem: Mapped[str] = mapped_column(Text)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(32))


class EnrollmentNonce(Base):
    """Nonces of signed device requests seen within the freshness window: a replay finds its own."""

    __tablename__ = "enrollment_nonces"

    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class EnrollmentToken(Base):
    """For factory provisioning: a secret that lets a batch of devices enrol, optionally accepted
    straight into a group."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    auto_accept: Mapped[bool] = mapped_column(Boolean, default=False)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("device_groups.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeviceGroup(Base):
    __tablename__ = "device_groups"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    kind: Mapped[str] = mapped_column(String(16))  # static | dynamic
    filter: Mapped[str | None] = mapped_column(Text)  # dynamic groups: the filter expression
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("device_groups.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class CrlState(Base):
    """One row: the number of the newest CRL, raised at every revocation so replicas reload it."""

    __tablename__ = "crl_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

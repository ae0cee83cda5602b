"""The director's table: each device's director metadata as served (the table was made by the
releases migration, v0005; its home is the director now)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeeper.core.db import Base, UTCDateTime, utcnow


class DirectorState(Base):
    """A device's director metadata as served, and what it assigns."""

    __tablename__ = "director_state"
    __table_args__ = (Index("ix_director_state_timestamp_expires", "timestamp_expires"),)

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    target_path: Mapped[str | None] = mapped_column(String(300))
    targets: Mapped[bytes] = mapped_column(LargeBinary)
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)
    timestamp: Mapped[bytes] = mapped_column(LargeBinary)
    targets_version: Mapped[int] = mapped_column(Integer)
    snapshot_version: Mapped[int] = mapped_column(Integer)
    timestamp_expires: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

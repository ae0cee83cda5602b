"""Tables of the terminal domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeeper.core.db import Base, UTCDateTime, utcnow

SESSION_KINDS = ("terminal", "upload", "download")


class TerminalSession(Base):
    """One terminal session or file transfer: who, from where, to which device, how long, how much.

    `closed_at` is null while it runs. Rows are kept after the device or the user is gone, as the
    audit log is: so no foreign keys."""

    __tablename__ = "terminal_sessions"
    __table_args__ = (Index("ix_terminal_sessions_device_open", "device_id", "closed_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(40), index=True)
    username: Mapped[str] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(Text)  # file transfers: the path on the device
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    close_reason: Mapped[str | None] = mapped_column(String(64))
    exit_status: Mapped[int | None] = mapped_column(BigInteger)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)  # operator → device
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)  # device → operator
    recording_key: Mapped[str | None] = mapped_column(String(200))

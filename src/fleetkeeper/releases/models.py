"""Tables of the releases domain: TUF metadata, releases and their tags, uploads in progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeeper.core.db import Base, UTCDateTime, utcnow


class RepositoryMetadata(Base):
    """Signed metadata of the image repository and the director root, byte for byte as served.

    Every version of root, targets and snapshot is kept (clients walk root versions, and
    consistent snapshots name versions); `timestamp` keeps its versions too."""

    __tablename__ = "repository_metadata"
    __table_args__ = (UniqueConstraint("repository", "role", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository: Mapped[str] = mapped_column(String(16))  # image | director
    role: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    expires: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    release_counter: Mapped[int] = mapped_column(BigInteger)
    module: Mapped[str] = mapped_column(String(64))
    device_types: Mapped[list[str]] = mapped_column(JSON)
    depends: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    provides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target_path: Mapped[str] = mapped_column(String(300), unique=True)
    length: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(500))
    sbom: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sbom_sha256: Mapped[str | None] = mapped_column(String(64))
    targets_version: Mapped[int] = mapped_column(Integer)
    signer_keyids: Mapped[list[str]] = mapped_column(JSON)
    uploaded_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReleaseTag(Base):
    """Tags scope `releases:*` permissions, as device groups scope `devices:*`."""

    __tablename__ = "release_tags"

    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class ReleaseUpload(Base):
    """An artifact arriving in chunks; the bytes wait in the data directory until completion."""

    __tablename__ = "release_uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    length: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

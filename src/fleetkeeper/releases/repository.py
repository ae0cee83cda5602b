"""The server's copy of TUF metadata (image repository and director root), and the online signing
of the image repository's snapshot and timestamp."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ConflictError
from fleetkeeper.releases.models import RepositoryMetadata
from fleetkeeper.releases.online_keys import SNAPSHOT, TIMESTAMP, OnlineKeys

IMAGE = "image"
DIRECTOR = "director"
SNAPSHOT_EXPIRY = timedelta(days=7)
TIMESTAMP_EXPIRY = timedelta(days=1)

# Compact and key-sorted: the same Metadata always gives the same bytes, which snapshot and timestamp hash.
_SERIALIZER = JSONSerializer(compact=True)


def to_bytes(metadata: Metadata[Any]) -> bytes:
    """The bytes to store and serve for `metadata` (this repository's, and each device's director
    metadata); snapshot and timestamp hashes are over these."""
    return metadata.to_bytes(_SERIALIZER)


async def latest_row(session: AsyncSession, repository: str, role: str) -> RepositoryMetadata | None:
    row: RepositoryMetadata | None = await session.scalar(
        select(RepositoryMetadata)
        .where(RepositoryMetadata.repository == repository, RepositoryMetadata.role == role)
        .order_by(RepositoryMetadata.version.desc())
        .limit(1)
    )
    return row


async def metadata_bytes(
    session: AsyncSession, repository: str, role: str, version: int | None
) -> bytes | None:
    """A version of a role as stored, or the newest when `version` is None."""
    if version is None:
        row = await latest_row(session, repository, role)
    else:
        row = await session.scalar(
            select(RepositoryMetadata).where(
                RepositoryMetadata.repository == repository,
                RepositoryMetadata.role == role,
                RepositoryMetadata.version == version,
            )
        )
    return row.content if row else None


async def latest(session: AsyncSession, repository: str, role: str) -> Metadata[Any] | None:
    row = await latest_row(session, repository, role)
    return Metadata.from_bytes(row.content) if row else None


async def store(
    session: AsyncSession, repository: str, metadata: Metadata[Any], content: bytes | None = None
) -> None:
    """Keeps a signed version; the unique (repository, role, version) makes a racing writer fail."""
    signed = metadata.signed
    session.add(
        RepositoryMetadata(
            repository=repository,
            role=signed.type,
            version=signed.version,
            content=content if content is not None else to_bytes(metadata),
            expires=signed.expires,
            created_at=utcnow(),
        )
    )
    await session.flush()


async def current_image_trust(session: AsyncSession) -> tuple[Metadata[Root], Metadata[Targets]]:
    root, targets = await latest(session, IMAGE, "root"), await latest(session, IMAGE, "targets")
    if root is None or targets is None:
        raise ConflictError(
            "the image repository has no trust yet: run `fleetkeeper trust init`", code="not_initialized"
        )
    return root, targets


async def sign_snapshot_and_timestamp(session: AsyncSession, keys: OnlineKeys, now: datetime) -> None:
    """A new snapshot naming the newest targets, and a timestamp naming that snapshot."""
    targets = await latest(session, IMAGE, "targets")
    assert targets is not None
    previous = await latest(session, IMAGE, "snapshot")
    snapshot: Metadata[Snapshot] = Metadata(
        Snapshot(
            version=previous.signed.version + 1 if previous else 1,
            expires=now + SNAPSHOT_EXPIRY,
            meta={"targets.json": MetaFile(version=targets.signed.version)},
        )
    )
    snapshot.sign(keys.signer(SNAPSHOT))
    snapshot_content = to_bytes(snapshot)
    await store(session, IMAGE, snapshot, snapshot_content)
    await _sign_timestamp(session, keys, snapshot, snapshot_content, now)


async def _sign_timestamp(
    session: AsyncSession, keys: OnlineKeys, snapshot: Metadata[Snapshot], content: bytes, now: datetime
) -> None:
    previous = await latest(session, IMAGE, "timestamp")
    timestamp: Metadata[Timestamp] = Metadata(
        Timestamp(
            version=previous.signed.version + 1 if previous else 1,
            expires=now + TIMESTAMP_EXPIRY,
            snapshot_meta=MetaFile(
                version=snapshot.signed.version,
                length=len(content),
                hashes={"sha256": hashlib.sha256(content).hexdigest()},
            ),
        )
    )
    timestamp.sign(keys.signer(TIMESTAMP))
    await store(session, IMAGE, timestamp)


async def refresh_if_due(session: AsyncSession, keys: OnlineKeys, now: datetime) -> bool:
    """Re-signs the snapshot (and so the timestamp) or only the timestamp when less than half of
    its life is left. Returns whether anything was signed."""
    snapshot_row = await latest_row(session, IMAGE, "snapshot")
    timestamp_row = await latest_row(session, IMAGE, "timestamp")
    if snapshot_row is None or timestamp_row is None:
        return False
    if snapshot_row.expires - now < SNAPSHOT_EXPIRY / 2:
        await sign_snapshot_and_timestamp(session, keys, now)
        return True
    if timestamp_row.expires - now < TIMESTAMP_EXPIRY / 2:
        snapshot = Metadata[Snapshot].from_bytes(snapshot_row.content)
        await _sign_timestamp(session, keys, snapshot, snapshot_row.content, now)
        return True
    return False

"""Resumable uploads of release artifacts: chunks appended at a declared offset into a staging
file in the data directory; a broken connection resumes from what the server has."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.config import Settings
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ConflictError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.releases.models import ReleaseUpload

TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}\Z")
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
STALE_AFTER = timedelta(hours=24)
_locks: dict[str, asyncio.Lock] = {}


def staging_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


def staging_path(settings: Settings, upload_id: str) -> Path:
    return staging_dir(settings) / f"{upload_id}.part"


def check_tags(principal: Principal, permission: Permission, tags: list[str]) -> list[str]:
    """Tags scope release permissions: a scoped caller tags within its scope, and tags at all."""
    for tag in tags:
        if not TAG.match(tag):
            raise ProblemError(f"{tag[:130]!r} is not a valid tag", code="invalid_tag", status=422)
    scopes = principal.grants.scopes(permission)
    if scopes is not None and (not tags or not set(tags) <= scopes):
        raise ProblemError(
            f"{permission.value} holds only for the tags {', '.join(sorted(scopes))}: tag the release so",
            code="forbidden",
            status=403,
            permission=permission.value,
        )
    return sorted(set(tags))


async def start(
    database: Database, settings: Settings, principal: Principal, *, length: int, sha256: str, tags: list[str]
) -> ReleaseUpload:
    if length > settings.max_release_bytes:
        raise ProblemError(
            f"the artifact is larger than the limit of {settings.max_release_bytes} bytes",
            code="payload_too_large",
            status=413,
        )
    if not SHA256.match(sha256):
        raise ProblemError("sha256 is 64 lowercase hexadecimal digits", code="invalid_request", status=422)
    tags = check_tags(principal, Permission.RELEASES_UPLOAD, tags)
    await _forget_stale(database, settings)
    upload = ReleaseUpload(
        id=new_id("upl"), length=length, sha256=sha256, received=0, tags=tags, created_by=principal.user_id
    )
    path = staging_path(settings, upload.id)
    await asyncio.to_thread(_create_empty, path)
    async with database.transaction() as session:
        session.add(upload)
    return upload


def _create_empty(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=False)


async def get(database: Database, principal: Principal, upload_id: str) -> ReleaseUpload:
    """An upload is its creator's alone."""
    async with database.session() as session:
        upload = await session.get(ReleaseUpload, upload_id)
    if upload is None or upload.created_by != principal.user_id:
        raise NotFoundError("no such upload", code="upload_not_found")
    return upload


async def append(
    database: Database,
    settings: Settings,
    principal: Principal,
    upload_id: str,
    offset: int,
    chunks: AsyncIterator[bytes],
) -> int:
    """Writes the body at `offset`, which must be what the server has received so far. Bytes of an
    earlier chunk that broke off before it was recorded are overwritten."""
    lock = _locks.setdefault(upload_id, asyncio.Lock())
    if lock.locked():
        raise ConflictError("another chunk of this upload is being received", code="upload_busy")
    async with lock:
        upload = await get(database, principal, upload_id)
        if offset != upload.received:
            raise ConflictError(
                f"the server has {upload.received} bytes: send from there",
                code="offset_mismatch",
                offset=upload.received,
            )
        path = staging_path(settings, upload_id)
        received = upload.received
        handle = await asyncio.to_thread(_open_at, path, received)
        try:
            async for chunk in chunks:
                if received + len(chunk) > upload.length:
                    raise ProblemError(
                        "more bytes than the upload declared", code="upload_too_long", status=413
                    )
                await asyncio.to_thread(handle.write, chunk)
                received += len(chunk)
            await asyncio.to_thread(_sync, handle)
        finally:
            await asyncio.to_thread(handle.close)
        async with database.transaction() as session:
            stored = await session.get(ReleaseUpload, upload_id)
            if stored is not None:
                stored.received = received
                stored.updated_at = utcnow()
        return received


def _open_at(path: Path, offset: int) -> BinaryIO:
    handle = path.open("r+b")
    handle.truncate(offset)
    handle.seek(offset)
    return handle


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


async def received_file(database: Database, settings: Settings, principal: Principal, upload_id: str) -> Path:
    """The complete staging file, checked against the declared length and SHA-256."""
    upload = await get(database, principal, upload_id)
    path = staging_path(settings, upload_id)
    if upload.received != upload.length:
        raise ConflictError(
            f"the upload has {upload.received} of {upload.length} bytes",
            code="upload_incomplete",
            offset=upload.received,
        )
    digest = await asyncio.to_thread(_sha256_of, path)
    if digest != upload.sha256:
        await discard(database, settings, upload_id)
        raise ProblemError(
            "the uploaded bytes do not match the declared sha256", code="upload_corrupted", status=422
        )
    return path


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


async def discard(database: Database, settings: Settings, upload_id: str) -> None:
    async with database.transaction() as session:
        upload = await session.get(ReleaseUpload, upload_id)
        if upload is not None:
            await session.delete(upload)
    await asyncio.to_thread(staging_path(settings, upload_id).unlink, missing_ok=True)
    _locks.pop(upload_id, None)


async def _forget_stale(database: Database, settings: Settings) -> None:
    async with database.session() as session:
        stale = (
            await session.scalars(
                select(ReleaseUpload.id).where(ReleaseUpload.updated_at < utcnow() - STALE_AFTER)
            )
        ).all()
    for upload_id in stale:
        await discard(database, settings, upload_id)

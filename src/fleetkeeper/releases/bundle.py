"""Offline bundles: one tar holding the image repository's metadata chain and a release's target,
for air-gapped sites. The agent verifies it with the same trust root as online updates."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import select
from tuf.api.metadata import Metadata, Targets

from fleetkeeper.core.errors import ConflictError, ProblemError
from fleetkeeper.releases import repository
from fleetkeeper.releases.context import ReleasesContext
from fleetkeeper.releases.models import Release, RepositoryMetadata

BUNDLE_FORMAT = "fleetkeeper-bundle-v1"
_BLOCK = 512


@dataclass(frozen=True)
class _Member:
    name: str
    content: bytes | None  # None: the target, streamed from the object store
    size: int


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


async def bundle_members(runtime: ReleasesContext, release: Release, device_type: str) -> list[_Member]:
    if device_type not in release.device_types:
        raise ProblemError(
            f"{release.name} {release.version} is for {', '.join(release.device_types)}, not {device_type}",
            code="incompatible_device_type",
            status=422,
        )
    members: list[_Member] = []
    async with runtime.database.session() as session:
        roots = (
            await session.scalars(
                select(RepositoryMetadata)
                .where(RepositoryMetadata.repository == repository.IMAGE, RepositoryMetadata.role == "root")
                .order_by(RepositoryMetadata.version)
            )
        ).all()
        latest = {
            role: await repository.latest_row(session, repository.IMAGE, role)
            for role in ("timestamp", "snapshot", "targets")
        }
    for row in roots:
        members.append(_Member(f"metadata/{row.version}.root.json", row.content, len(row.content)))
    for role, latest_row in latest.items():
        if latest_row is None:
            raise ConflictError("the image repository has no trust yet", code="not_initialized")
        name = "timestamp.json" if role == "timestamp" else f"{latest_row.version}.{role}.json"
        members.append(_Member(f"metadata/{name}", latest_row.content, len(latest_row.content)))
    targets_row = latest["targets"]
    assert targets_row is not None
    targets: Metadata[Targets] = Metadata.from_bytes(targets_row.content)
    if release.target_path not in targets.signed.targets:
        raise ConflictError(
            "the current targets metadata no longer lists this release", code="target_not_in_repository"
        )
    directory, _, filename = release.target_path.rpartition("/")
    members.append(_Member(f"targets/{directory}/{release.sha256}.{filename}", None, release.length))
    manifest = {
        "format": BUNDLE_FORMAT,
        "release": {
            "name": release.name,
            "version": release.version,
            "release_counter": release.release_counter,
        },
        "device_type": device_type,
        "target_path": release.target_path,
        "metadata": [member.name for member in members if member.content is not None],
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    return [_Member("bundle.json", manifest_bytes, len(manifest_bytes)), *members]


async def stream_bundle(
    runtime: ReleasesContext, release: Release, members: list[_Member]
) -> AsyncIterator[bytes]:
    for member in members:
        yield _header(member.name, member.size)
        if member.content is not None:
            yield member.content
        else:
            async for chunk in runtime.object_store.open(release.object_key):
                yield chunk
        yield _padding(member.size)
    yield b"\0" * (2 * _BLOCK)


def read_bundle_manifest(data: bytes) -> dict[str, object]:
    """For tests and tools: the manifest of a bundle held in memory."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("bundle.json")
        assert member is not None
        manifest: dict[str, object] = json.loads(member.read())
        return manifest

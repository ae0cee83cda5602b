"""Wire types of the releases APIs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from fleetkeeper.releases.models import Release


class ReleaseOut(BaseModel):
    id: str
    name: str
    version: str
    release_counter: int
    module: str
    device_types: list[str]
    depends: dict[str, Any]
    provides: dict[str, Any]
    target_path: str
    length: int
    hashes: dict[str, str]
    signers: list[str]
    targets_version: int
    tags: list[str]
    sbom_sha256: str | None
    created_at: datetime

    @classmethod
    def of(cls, release: Release, tags: list[str]) -> ReleaseOut:
        return cls(
            id=release.id,
            name=release.name,
            version=release.version,
            release_counter=release.release_counter,
            module=release.module,
            device_types=release.device_types,
            depends=release.depends,
            provides=release.provides,
            target_path=release.target_path,
            length=release.length,
            hashes={"sha256": release.sha256},
            signers=release.signer_keyids,
            targets_version=release.targets_version,
            tags=tags,
            sbom_sha256=release.sbom_sha256,
            created_at=release.created_at,
        )


class ReleaseDetail(ReleaseOut):
    sbom: dict[str, Any] | None


class ReleasePage(BaseModel):
    items: list[ReleaseOut]
    next_cursor: str | None

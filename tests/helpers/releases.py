"""Releases as the tests need them: trust installed, artifacts signed and uploaded through the
management API in process, or a release row written directly when the upload is not under test."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
from tuf.api.metadata import Metadata

from fleetkeeper.core.db import utcnow
from fleetkeeper.core.ids import new_id
from fleetkeeper.releases.artifact import create_artifact
from fleetkeeper.releases.keys import init_keys
from fleetkeeper.releases.models import Release, ReleaseTag
from fleetkeeper.releases.signing import sign_release
from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json
from tests.conftest import Api


def in_days(days: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)


async def initialize(api: Api, directory: Path) -> Path:
    """Offline keys in `directory`, and the server's trust installed with them."""
    keys = directory / "keys"
    init_keys(keys, threshold=1, count=1)
    online = online_keys_from_json(api.runtime.online_keys.public_keys())
    trust = build_initial_trust(keys, online, in_days(365))
    response = await api.client.post(
        "/api/v1/repository/trust",
        json={
            "root": trust.root.to_dict(),
            "targets": trust.targets.to_dict(),
            "director_root": trust.director_root.to_dict(),
        },
        headers=await api.admin_headers(),
    )
    assert response.status_code == 201, response.text
    return keys


async def signed_artifact(
    api: Api,
    keys: Path,
    directory: Path,
    name: str,
    version: str,
    payload: bytes,
    *,
    counter: int = 1,
    sign: bool = True,
) -> Path:
    source = directory / f"{name}-{version}.bin"
    source.write_bytes(payload)
    artifact = directory / f"{name}-{version}.fkr"
    create_artifact(
        artifact,
        name=name,
        version=version,
        release_counter=counter,
        module="file",
        device_types=["rpi4"],
        depends={},
        provides={},
        payload_paths=[source],
        sbom_path=None,
    )
    if sign:
        current = await api.client.get(
            "/api/v1/repository/metadata/targets.json", headers=await api.admin_headers()
        )
        sign_release(artifact, keys, Metadata.from_bytes(current.content), in_days(30))
    return artifact


async def upload(
    api: Api,
    headers: dict[str, str],
    artifact: Path,
    *,
    tags: list[str] | None = None,
    chunk: int = 64 * 1024,
) -> httpx2.Response:
    data = artifact.read_bytes()
    started = await api.client.post(
        "/api/v1/releases/uploads",
        json={"length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tags": tags or []},
        headers=headers,
    )
    if started.status_code != 201:
        return started
    upload_id = started.json()["id"]
    for offset in range(0, len(data), chunk):
        sent = await api.client.patch(
            f"/api/v1/releases/uploads/{upload_id}",
            content=data[offset : offset + chunk],
            headers={**headers, "upload-offset": str(offset)},
        )
        assert sent.status_code == 200, sent.text
    return await api.client.post(f"/api/v1/releases/uploads/{upload_id}/complete", headers=headers)


def release_summary(response: httpx2.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


async def a_release(
    api: Api, name: str = "fw", version: str = "2.0", *, counter: int = 7, tags: Sequence[str] = ()
) -> Release:
    """A release row written directly (fw 2.0 unless named), for tests where the upload is not under test."""
    release = Release(
        id=new_id("rel"),
        name=name,
        version=version,
        release_counter=counter,
        module="file",
        device_types=["rpi4"],
        depends={},
        provides={},
        target_path=f"{name}/{version}/{name}.bin",
        length=10,
        sha256="ab" * 32,
        object_key=f"targets/{name}/{version}/x.{name}.bin",
        sbom=None,
        sbom_sha256=None,
        targets_version=2,
        signer_keyids=["k"],
        uploaded_by=None,
        created_at=utcnow(),
    )
    async with api.runtime.database.transaction() as session:
        session.add(release)
        await session.flush()
        session.add_all(ReleaseTag(release_id=release.id, tag=tag) for tag in tags)
    return release

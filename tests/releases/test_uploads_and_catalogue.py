"""Uploads through the API (resumable, owner-only, bounded), the catalogue (list, show, tag,
delete) with tag scopes, and object stores on the filesystem and on S3."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select

from fleetkeeper.audit.models import AuditRecord
from tests.conftest import Api, RuntimeFactory, S3Server, api_for
from tests.helpers.devices import accepted_device, device_client
from tests.helpers.releases import initialize, signed_artifact, upload


@pytest.fixture(params=["filesystem", "s3"])
async def store_api(request: pytest.FixtureRequest, runtime_factory: RuntimeFactory) -> AsyncIterator[Api]:
    """The management API on a runtime whose payloads live on the filesystem or in S3."""
    overrides = {}
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        prefix = f"rel-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]}"
        overrides = {
            "object_store_url": f"s3://{s3.bucket}/{prefix}",
            "s3_endpoint": s3.endpoint,
            "s3_access_key_id": s3.access_key_id,
            "s3_secret_access_key": s3.secret_access_key,
            "s3_allow_http": True,
        }
    runtime = await runtime_factory(**overrides)
    async with api_for(runtime) as api:
        yield api


async def test_upload_serve_and_delete_on_both_stores(store_api: Api, tmp_path: Path) -> None:
    api = store_api
    admin = await api.admin_headers()
    keys = await initialize(api, tmp_path)
    payload = bytes(range(256)) * 4000
    accepted = await upload(
        api, admin, await signed_artifact(api, keys, tmp_path, "fw", "1.0", payload), tags=["line-7"]
    )
    assert accepted.status_code == 201, accepted.text
    release = accepted.json()
    assert release["tags"] == ["line-7"]
    assert release["hashes"]["sha256"] == hashlib.sha256(payload).hexdigest()

    device = await accepted_device(api)
    path = f"fw/1.0/{release['hashes']['sha256']}.fw-1.0.bin"
    async with device_client(api.runtime, device.certificate) as client:
        response = await client.get(f"/device/v1/repository/targets/{path}", headers={"range": "bytes=10-19"})
        if api.runtime.settings.object_store_url:
            assert response.status_code == 307, "S3: a short-lived presigned URL"
            fetched = httpx2.get(response.headers["location"], headers={"range": "bytes=10-19"})
            assert fetched.status_code == 206
            assert fetched.content == payload[10:20]
        else:
            assert response.status_code == 206
            assert response.content == payload[10:20]
        assert (await client.get("/device/v1/repository/targets/fw/1.0/nope.bin")).status_code == 404

    listed = (await api.client.get("/api/v1/releases", headers=admin)).json()["items"]
    assert [item["name"] for item in listed] == ["fw"]
    assert (await api.client.delete("/api/v1/releases/fw/1.0", headers=admin)).status_code == 204
    assert (await api.client.get("/api/v1/releases/fw/1.0", headers=admin)).status_code == 404
    async with device_client(api.runtime, device.certificate) as client:
        assert (await client.get(f"/device/v1/repository/targets/{path}")).status_code == 404
    assert not await api.runtime.object_store.exists(f"targets/{path}")


async def test_resume_after_a_broken_chunk(api: Api, tmp_path: Path) -> None:
    admin = await api.admin_headers()
    keys = await initialize(api, tmp_path)
    data = (await signed_artifact(api, keys, tmp_path, "fw", "2.0", b"z" * 200_000)).read_bytes()
    started = await api.client.post(
        "/api/v1/releases/uploads",
        json={"length": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        headers=admin,
    )
    upload_id = started.json()["id"]
    first = await api.client.patch(
        f"/api/v1/releases/uploads/{upload_id}",
        content=data[:100_000],
        headers={**admin, "upload-offset": "0"},
    )
    assert first.json()["offset"] == 100_000
    wrong = await api.client.patch(
        f"/api/v1/releases/uploads/{upload_id}",
        content=data[50_000:],
        headers={**admin, "upload-offset": "50000"},
    )
    assert wrong.status_code == 409
    assert wrong.json()["code"] == "offset_mismatch"
    assert wrong.json()["offset"] == 100_000
    status = await api.client.head(f"/api/v1/releases/uploads/{upload_id}", headers=admin)
    assert status.headers["upload-offset"] == "100000"
    early = await api.client.post(f"/api/v1/releases/uploads/{upload_id}/complete", headers=admin)
    assert early.json()["code"] == "upload_incomplete"
    rest = await api.client.patch(
        f"/api/v1/releases/uploads/{upload_id}",
        content=data[100_000:],
        headers={**admin, "upload-offset": "100000"},
    )
    assert rest.json()["offset"] == len(data)
    done = await api.client.post(f"/api/v1/releases/uploads/{upload_id}/complete", headers=admin)
    assert done.status_code == 201, done.text


async def test_upload_limits_and_ownership(runtime_factory: RuntimeFactory, tmp_path: Path) -> None:
    runtime = await runtime_factory(max_release_bytes=50_000)
    async with api_for(runtime) as api:
        admin = await api.admin_headers()
        keys = await initialize(api, tmp_path)
        too_big = await api.client.post(
            "/api/v1/releases/uploads", json={"length": 60_000, "sha256": "0" * 64}, headers=admin
        )
        assert too_big.status_code == 413
        assert too_big.json()["code"] == "payload_too_large"
        artifact = await signed_artifact(api, keys, tmp_path, "fw", "3.0", b"q" * 1000)
        data = artifact.read_bytes()
        started = await api.client.post(
            "/api/v1/releases/uploads", json={"length": len(data), "sha256": "f" * 64}, headers=admin
        )
        upload_id = started.json()["id"]
        other = await api.create_user("rel", "tulip-orbit-canyon-7", roles=[{"role": "release-manager"}])
        assert (
            await api.client.head(f"/api/v1/releases/uploads/{upload_id}", headers=other)
        ).status_code == 404
        longer = await api.client.patch(
            f"/api/v1/releases/uploads/{upload_id}",
            content=data + b"x",
            headers={**admin, "upload-offset": "0"},
        )
        assert longer.json()["code"] == "upload_too_long"
        await api.client.patch(
            f"/api/v1/releases/uploads/{upload_id}", content=data, headers={**admin, "upload-offset": "0"}
        )
        corrupted = await api.client.post(f"/api/v1/releases/uploads/{upload_id}/complete", headers=admin)
        assert corrupted.json()["code"] == "upload_corrupted"
        assert not list((runtime.settings.data_dir / "uploads").glob("*")), "the corrupted upload is gone"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        ("unsigned", "invalid_artifact"),
        ("stale", "stale_metadata_version"),
    ],
)
async def test_refusals_are_audited_and_leave_nothing(api: Api, tmp_path: Path, make: str, code: str) -> None:
    admin = await api.admin_headers()
    keys = await initialize(api, tmp_path)
    stale = await signed_artifact(api, keys, tmp_path, "a", "1.0", b"a" * 100)
    assert (
        await upload(api, admin, await signed_artifact(api, keys, tmp_path, "b", "1.0", b"b" * 100))
    ).status_code == 201
    artifact = (
        stale if make == "stale" else await signed_artifact(api, keys, tmp_path, "c", "1.0", b"c", sign=False)
    )
    before = sorted(p.name for p in (api.runtime.settings.data_dir / "objects").rglob("*") if p.is_file())
    refused = await upload(api, admin, artifact)
    assert refused.status_code in (409, 422)
    assert refused.json()["code"] == code
    after = sorted(p.name for p in (api.runtime.settings.data_dir / "objects").rglob("*") if p.is_file())
    assert before == after
    async with api.runtime.database.session() as session:
        refusals = (
            await session.scalars(select(AuditRecord).where(AuditRecord.action == "release.upload_refused"))
        ).all()
    assert [r.details_object()["problem"] for r in refusals] == [code]


async def test_tags_scope_release_permissions(api: Api, tmp_path: Path) -> None:
    admin = await api.admin_headers()
    keys = await initialize(api, tmp_path)
    for name, tags in (("fw-a", ["line-7"]), ("fw-b", ["line-8"])):
        response = await upload(
            api, admin, await signed_artifact(api, keys, tmp_path, name, "1.0", name.encode()), tags=tags
        )
        assert response.status_code == 201, response.text
    scoped = await api.create_user(
        "rel7", "tulip-orbit-canyon-7", roles=[{"role": "release-manager", "release_tags": ["line-7"]}]
    )
    listed = (await api.client.get("/api/v1/releases", headers=scoped)).json()["items"]
    assert [item["name"] for item in listed] == ["fw-a"]
    assert (await api.client.get("/api/v1/releases/fw-b/1.0", headers=scoped)).status_code == 404
    untagged = await api.client.post(
        "/api/v1/releases/uploads", json={"length": 10, "sha256": "0" * 64}, headers=scoped
    )
    assert untagged.status_code == 403
    retag = await api.client.put("/api/v1/releases/fw-a/1.0/tags", json={"tags": ["line-8"]}, headers=scoped)
    assert retag.status_code == 403
    ok = await api.client.put(
        "/api/v1/releases/fw-a/1.0/tags", json={"tags": ["line-7", "stable"]}, headers=admin
    )
    assert ok.json() == ["line-7", "stable"]

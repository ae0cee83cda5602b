"""The image repository's signed targets metadata names every release: it cannot be cut to a
reader's tags (that would break its signature), so only a reader of every release reads it, and
nothing that carries it (an offline bundle) goes to anyone else."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Api
from tests.helpers.releases import initialize, signed_artifact, upload


async def test_only_a_reader_of_every_release_reads_the_signed_targets(api: Api, tmp_path: Path) -> None:
    admin = await api.admin_headers()
    keys = await initialize(api, tmp_path)
    for name, tags in (("fw-a", ["line-7"]), ("fw-b", ["line-8"])):
        artifact = await signed_artifact(api, keys, tmp_path, name, "1.0", name.encode())
        assert (await upload(api, admin, artifact, tags=tags)).status_code == 201
    scoped = await api.create_user(
        "line-7", "tulip-orbit-canyon-7", roles=[{"role": "read-only", "release_tags": ["line-7"]}]
    )

    for name in ("targets.json", "3.targets.json"):
        refused = await api.client.get(f"/api/v1/repository/metadata/{name}", headers=scoped)
        assert refused.status_code == 403, (name, refused.text)
        assert refused.json()["permission"] == "releases:read"
        assert "fw-b" not in refused.text
    whole = await api.client.get("/api/v1/repository/metadata/targets.json", headers=admin)
    assert set(whole.json()["signed"]["targets"]) == {"fw-a/1.0/fw-a-1.0.bin", "fw-b/1.0/fw-b-1.0.bin"}
    # The rest of the chain names no release: a tag-scoped reader still verifies with it.
    for name in ("root.json", "1.root.json", "timestamp.json", "snapshot.json"):
        assert (
            await api.client.get(f"/api/v1/repository/metadata/{name}", headers=scoped)
        ).status_code == 200

    bundle = await api.client.get(
        "/api/v1/releases/fw-a/1.0/bundle", params={"device_type": "rpi4"}, headers=scoped
    )
    assert bundle.status_code == 403, "a bundle carries the whole targets metadata"
    assert (await api.client.get("/api/v1/releases/fw-a/1.0", headers=scoped)).status_code == 200
    exported = await api.client.get(
        "/api/v1/releases/fw-a/1.0/bundle", params={"device_type": "rpi4"}, headers=admin
    )
    assert exported.status_code == 200


async def test_tag_scoped_release_managers_do_not_touch_trust_or_others_tags(
    api: Api, tmp_path: Path
) -> None:
    admin = await api.admin_headers()
    scoped = await api.create_user(
        "rm", "tulip-orbit-canyon-7", roles=[{"role": "release-manager", "release_tags": ["a"]}]
    )
    refused = await api.client.post(
        "/api/v1/repository/trust", json={"root": {}, "targets": {}, "director_root": {}}, headers=scoped
    )
    assert refused.status_code == 403
    keys = await initialize(api, tmp_path)
    response = await upload(
        api, admin, await signed_artifact(api, keys, tmp_path, "fw", "1.0", b"x"), tags=["a", "b"]
    )
    assert response.status_code == 201
    kept = await api.client.put("/api/v1/releases/fw/1.0/tags", json={"tags": ["a"]}, headers=scoped)
    assert kept.json() == ["a", "b"], "the tag outside the caller's scope stays"

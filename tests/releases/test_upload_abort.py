"""Aborting a resumable upload through the API: the staging file and the record go."""

from __future__ import annotations

import hashlib

from tests.conftest import Api


async def test_an_aborted_upload_leaves_nothing(api: Api) -> None:
    admin = await api.admin_headers()
    data = b"partial artifact " * 1000
    started = await api.client.post(
        "/api/v1/releases/uploads",
        json={"length": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        headers=admin,
    )
    upload_id = started.json()["id"]
    sent = await api.client.patch(
        f"/api/v1/releases/uploads/{upload_id}",
        content=data[:5000],
        headers={**admin, "upload-offset": "0"},
    )
    assert sent.json()["offset"] == 5000
    staged = api.runtime.settings.data_dir / "uploads" / f"{upload_id}.part"
    assert staged.is_file()

    aborted = await api.client.delete(f"/api/v1/releases/uploads/{upload_id}", headers=admin)

    assert aborted.status_code == 204, aborted.text
    assert not staged.exists(), "the partial file is gone"
    status = await api.client.head(f"/api/v1/releases/uploads/{upload_id}", headers=admin)
    assert status.status_code == 404
    again = await api.client.delete(f"/api/v1/releases/uploads/{upload_id}", headers=admin)
    assert again.json()["code"] == "upload_not_found"

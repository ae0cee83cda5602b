"""The release engineer's side of a resumable upload: chunks at offsets, resumed after a broken
connection (within one run, and across runs through a small state file beside the artifact)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

CHUNK_SIZE = 8 * 1024 * 1024
RETRIES = 6


class UploadError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def state_path(artifact: Path) -> Path:
    """Where a run remembers its upload, so that the next run resumes it."""
    return artifact.with_name(artifact.name + ".upload.json")


def file_sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def _problem(response: httpx2.Response) -> UploadError:
    try:
        body = response.json()
        return UploadError(str(body.get("code", response.status_code)), str(body.get("detail", "")))
    except ValueError:
        return UploadError(str(response.status_code), response.text[:200])


def upload(
    artifact: Path,
    server: str,
    token: str,
    *,
    tags: list[str],
    on_progress: Callable[[int, int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    client: httpx2.Client | None = None,
) -> dict[str, Any]:
    """Uploads and completes; returns the release. Calls `on_progress(sent, total)` as bytes go."""
    size = artifact.stat().st_size
    digest = file_sha256(artifact)
    http = client or httpx2.Client(timeout=httpx2.Timeout(60.0, connect=10.0))
    http.headers["authorization"] = f"Bearer {token}"
    base = server.rstrip("/")
    try:
        return _upload(http, base, artifact, size, digest, tags, on_progress, chunk_size)
    except httpx2.TransportError as exc:
        raise UploadError("connection_failed", f"{exc}; run the command again to resume") from None
    finally:
        if client is None:
            http.close()


def _upload(
    http: httpx2.Client,
    base: str,
    artifact: Path,
    size: int,
    digest: str,
    tags: list[str],
    on_progress: Callable[[int, int], None] | None,
    chunk_size: int,
) -> dict[str, Any]:
    upload_id = _resume_or_start(http, base, artifact, size, digest, tags)
    offset = _offset(http, base, upload_id)
    failures = 0
    with artifact.open("rb") as handle:
        while offset < size:
            if on_progress:
                on_progress(offset, size)
            handle.seek(offset)
            chunk = handle.read(chunk_size)
            try:
                response = http.patch(
                    f"{base}/api/v1/releases/uploads/{upload_id}",
                    content=chunk,
                    headers={
                        "upload-offset": str(offset),
                        "content-type": "application/offset+octet-stream",
                    },
                )
            except httpx2.TransportError:
                failures += 1
                if failures > RETRIES:
                    raise
                time.sleep(min(2**failures, 30) * 0.1)
                offset = _offset(http, base, upload_id)
                continue
            if response.status_code == 409 and response.json().get("code") == "offset_mismatch":
                offset = int(response.json()["offset"])
                continue
            if response.status_code != 200:
                raise _problem(response)
            offset = int(response.json()["offset"])
            failures = 0
    if on_progress:
        on_progress(size, size)
    done = http.post(f"{base}/api/v1/releases/uploads/{upload_id}/complete", timeout=600)
    state_path(artifact).unlink(missing_ok=True)
    if done.status_code != 201:
        raise _problem(done)
    release: dict[str, Any] = done.json()
    return release


def _resume_or_start(
    http: httpx2.Client, base: str, artifact: Path, size: int, digest: str, tags: list[str]
) -> str:
    remembered = state_path(artifact)
    if remembered.exists():
        state = json.loads(remembered.read_text())
        if state.get("server") == base and state.get("sha256") == digest:
            probe = http.head(f"{base}/api/v1/releases/uploads/{state['upload_id']}")
            if probe.status_code == 200:
                return str(state["upload_id"])
    response = http.post(
        f"{base}/api/v1/releases/uploads", json={"length": size, "sha256": digest, "tags": tags}
    )
    if response.status_code != 201:
        raise _problem(response)
    upload_id = str(response.json()["id"])
    remembered.write_text(json.dumps({"upload_id": upload_id, "server": base, "sha256": digest}))
    return upload_id


def _offset(http: httpx2.Client, base: str, upload_id: str) -> int:
    response = http.head(f"{base}/api/v1/releases/uploads/{upload_id}")
    if response.status_code != 200:
        raise UploadError("upload_not_found", "the server no longer has this upload; start again")
    return int(response.headers["upload-offset"])

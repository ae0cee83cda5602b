"""Routes of resumable release uploads (docs/software-trust.md, "A release")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, Field

from fleetkeeper.access.auth import requires
from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.wire import RequestBody
from fleetkeeper.releases import uploads
from fleetkeeper.releases.context import releases_context
from fleetkeeper.releases.schemas import ReleaseOut
from fleetkeeper.releases.service import publish_upload

router = APIRouter(prefix="/api/v1/releases/uploads", tags=["releases"])
Uploader = Annotated[Principal, requires(Permission.RELEASES_UPLOAD)]


class StartUpload(RequestBody):
    length: int = Field(ge=1)
    sha256: str = Field(min_length=64, max_length=64)
    tags: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=20)


class UploadOut(BaseModel):
    id: str
    offset: int
    length: int


@router.post("", status_code=201)
async def start(body: StartUpload, principal: Uploader, request: Request) -> UploadOut:
    """Announces an artifact: its length, SHA-256 and the tags it will carry."""
    runtime = releases_context(request)
    upload = await uploads.start(
        runtime.database, runtime.settings, principal, length=body.length, sha256=body.sha256, tags=body.tags
    )
    return UploadOut(id=upload.id, offset=0, length=upload.length)


@router.head("/{upload_id}")
async def status(upload_id: str, principal: Uploader, request: Request) -> Response:
    """Where to resume: the `Upload-Offset` header."""
    upload = await uploads.get(releases_context(request).database, principal, upload_id)
    return Response(headers={"upload-offset": str(upload.received), "upload-length": str(upload.length)})


@router.patch("/{upload_id}")
async def append(
    upload_id: str,
    principal: Uploader,
    request: Request,
    upload_offset: Annotated[int, Header(ge=0)],
) -> UploadOut:
    """A chunk, written at `Upload-Offset` (which must be what the server has)."""
    runtime = releases_context(request)
    received = await uploads.append(
        runtime.database, runtime.settings, principal, upload_id, upload_offset, request.stream()
    )
    upload = await uploads.get(runtime.database, principal, upload_id)
    return UploadOut(id=upload_id, offset=received, length=upload.length)


@router.delete("/{upload_id}", status_code=204)
async def abort(upload_id: str, principal: Uploader, request: Request) -> Response:
    runtime = releases_context(request)
    await uploads.get(runtime.database, principal, upload_id)
    await uploads.discard(runtime.database, runtime.settings, upload_id)
    return Response(status_code=204)


@router.post("/{upload_id}/complete", status_code=201)
async def complete(upload_id: str, principal: Uploader, request: Request) -> ReleaseOut:
    """Verifies everything before accepting; a refused upload leaves nothing behind."""
    return await publish_upload(releases_context(request), principal, upload_id)

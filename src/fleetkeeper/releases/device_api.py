"""Device listener routes of the releases domain: the image repository's metadata and targets."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.devices.auth import AuthenticatedDevice
from fleetkeeper.releases import repository, service
from fleetkeeper.releases.api import metadata_response
from fleetkeeper.releases.context import releases_context
from fleetkeeper.releases.ranges import range_response

router = APIRouter(prefix="/device/v1", tags=["device"])


@router.get("/repository/metadata/{filename}")
async def image_metadata(filename: str, device: AuthenticatedDevice, request: Request) -> Response:
    return await metadata_response(releases_context(request), repository.IMAGE, filename)


@router.get("/repository/targets/{path:path}", response_model=None)
async def target(path: str, device: AuthenticatedDevice, request: Request) -> Response:
    """A target file by its consistent-snapshot path (`<name>/<version>/<sha256>.<file>`): HTTP
    Range supported; with S3, a redirect to a short-lived presigned URL."""
    runtime = releases_context(request)
    key = f"targets/{path}"
    async with runtime.database.session() as session:
        release = await service.served_object(session, key)
    if release is None:
        raise NotFoundError("no such target", code="target_not_found")
    url = await runtime.object_store.presigned_url(key, runtime.settings.presigned_url_seconds)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    return await range_response(
        runtime.object_store, key, request.headers.get("range"), "application/octet-stream"
    )

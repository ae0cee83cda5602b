"""Device listener routes of the releases domain: the image repository and the device's director."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.core.peer import PeerCertificate
from fleetkeeper.deployments import service as deployments
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.auth import AuthenticatedDevice, DevicePeer, authenticate, authenticate_with
from fleetkeeper.releases import director_checkin, repository, service
from fleetkeeper.releases.api import METADATA_FILE, metadata_response
from fleetkeeper.releases.context import ReleasesContext, releases_context
from fleetkeeper.releases.models import DirectorState
from fleetkeeper.releases.ranges import range_response

router = APIRouter(prefix="/device/v1", tags=["device"])


@router.get("/director/metadata/{filename}")
async def director_metadata(filename: str, peer: DevicePeer, request: Request) -> Response:
    """This device's director metadata (the device is known from its certificate).

    A check-in (timestamp.json) that changes nothing is one statement (`director_checkin`); the
    others read the device, what its deployments want now and its director state in one session
    without a transaction. A check-in writes only when the assignment changed (the metadata is
    re-signed) or when the device's last-seen time is a minute old."""
    runtime = releases_context(request)
    match = METADATA_FILE.match(filename)
    version, role = (match.group(1), match.group(2)) if match else (None, None)
    if role == "timestamp" and version is None:
        unchanged = await unchanged_check_in(runtime, peer)
        if unchanged is not None:
            return unchanged
    wanted_release = None
    state = None
    # A check-in that gets here may write (`assignment_for` records an install it finds in the
    # inventory), which the read pool's autocommit session would not do atomically.
    reading = runtime.database.session() if role == "timestamp" else runtime.database.read()
    async with reading as session:
        if role in ("timestamp", "snapshot", "targets"):
            device, state = await authenticate_with(session, peer, DirectorState)
        else:
            device = await authenticate(session, peer)
        if role == "timestamp":
            # A check-in: the director names what the device's oldest active deployment wants now.
            assignment = await deployments.assignment_for(session, device.id)
            wanted_release = assignment[1] if assignment else None
    await devices.touch(runtime.database, device)
    if role is None:
        raise NotFoundError("no such metadata", code="metadata_not_found")
    if role == "root":
        return await metadata_response(runtime, repository.DIRECTOR, filename)
    files = await service.director_files(
        runtime,
        device.id,
        device.device_type,
        check_in=role == "timestamp",
        wanted=wanted_release,
        state=state,
    )
    by_role = {
        "timestamp": (files.timestamp, None),
        "snapshot": (files.snapshot, files.snapshot_version),
        "targets": (files.targets, files.targets_version),
    }
    content, current = by_role[role]
    if version is not None and int(version) != current:
        raise NotFoundError(
            "that version is no longer current: refresh from timestamp.json", code="metadata_not_found"
        )
    return _metadata(content)


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


async def unchanged_check_in(runtime: ReleasesContext, peer: PeerCertificate) -> Response | None:
    """A check-in that changes nothing: the stored director timestamp, else None (the general
    path of `director_metadata`). Also the check-in's hot handler (`core/hotroutes.py`)."""
    unchanged = await director_checkin.unchanged_timestamp(runtime, peer)
    return _metadata(unchanged) if unchanged is not None else None


def _metadata(content: bytes) -> Response:
    return Response(content, media_type="application/json", headers={"cache-control": "no-store"})

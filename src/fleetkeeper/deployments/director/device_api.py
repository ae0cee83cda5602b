"""The device's director on the device listener: its own director metadata, by its certificate."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.core.hotroutes import hot_handler_missed
from fleetkeeper.core.peer import PeerCertificate
from fleetkeeper.deployments.context import DeploymentsContext, deployments_context
from fleetkeeper.deployments.director import checkin, files
from fleetkeeper.deployments.director.assignment import assignment_for
from fleetkeeper.deployments.director.models import DirectorState
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.auth import DevicePeer, authenticate, authenticate_with
from fleetkeeper.releases import repository
from fleetkeeper.releases.api import METADATA_FILE, metadata_response

router = APIRouter(prefix="/device/v1", tags=["device"])


@router.get("/director/metadata/{filename}")
async def director_metadata(filename: str, peer: DevicePeer, request: Request) -> Response:
    """This device's director metadata (the device is known from its certificate).

    A check-in (timestamp.json) that changes nothing is one statement (`checkin.py`), run once:
    by the hot handler, or here when the request did not come through it. The others read the
    device, what its deployments want now and its director state in one session without a
    transaction. A check-in writes only when the assignment changed (the metadata is re-signed) or
    when the device's last-seen time is a minute old."""
    runtime = deployments_context(request)
    match = METADATA_FILE.match(filename)
    version, role = (match.group(1), match.group(2)) if match else (None, None)
    if role == "timestamp" and version is None and not hot_handler_missed(request):
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
            assignment = await assignment_for(session, device.id)
            wanted_release = assignment[1] if assignment else None
    await devices.touch(runtime.database, device)
    if role is None:
        raise NotFoundError("no such metadata", code="metadata_not_found")
    if role == "root":
        return await metadata_response(runtime, repository.DIRECTOR, filename)
    served = await files.director_files(
        runtime,
        device.id,
        device.device_type,
        check_in=role == "timestamp",
        wanted=wanted_release,
        state=state,
    )
    by_role = {
        "timestamp": (served.timestamp, None),
        "snapshot": (served.snapshot, served.snapshot_version),
        "targets": (served.targets, served.targets_version),
    }
    content, current = by_role[role]
    if version is not None and int(version) != current:
        raise NotFoundError(
            "that version is no longer current: refresh from timestamp.json", code="metadata_not_found"
        )
    return _metadata(content)


async def unchanged_check_in(runtime: DeploymentsContext, peer: PeerCertificate) -> Response | None:
    """A check-in that changes nothing: the stored director timestamp, else None (the general
    path of `director_metadata`). Also the check-in's hot handler (`core/hotroutes.py`)."""
    unchanged = await checkin.unchanged_timestamp(runtime, peer)
    return _metadata(unchanged) if unchanged is not None else None


def _metadata(content: bytes) -> Response:
    return Response(content, media_type="application/json", headers={"cache-control": "no-store"})

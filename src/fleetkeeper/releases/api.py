"""Management routes of the releases domain: the repository's trust, its metadata, the catalogue."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from fleetkeeper.access.auth import PUBLIC, requires
from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.errors import NotFoundError, ProblemError
from fleetkeeper.core.wire import RequestBody
from fleetkeeper.releases import repository, service
from fleetkeeper.releases.bundle import bundle_members, stream_bundle
from fleetkeeper.releases.context import ReleasesContext, releases_context
from fleetkeeper.releases.schemas import ReleaseDetail, ReleaseOut, ReleasePage

router = APIRouter(prefix="/api/v1", tags=["releases"])
Reader = Annotated[Principal, requires(Permission.RELEASES_READ)]
Manager = Annotated[Principal, requires(Permission.RELEASES_MANAGE)]
METADATA_FILE = re.compile(r"^(?:(\d{1,9})\.)?(root|timestamp|snapshot|targets)\.json\Z")


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class TrustRequest(RequestBody):
    root: dict[str, Any]
    targets: dict[str, Any]
    director_root: dict[str, Any]


class RootRequest(RequestBody):
    root: dict[str, Any] | None = None
    director_root: dict[str, Any] | None = None


@router.get("/repository/online-keys", dependencies=[PUBLIC])
async def online_keys(request: Request) -> dict[str, Any]:
    """The public keys the server signs snapshot, timestamp and director metadata with."""
    return releases_context(request).online_keys.public_keys()


@router.post("/repository/trust", status_code=201)
async def install_trust(body: TrustRequest, principal: Manager, request: Request) -> dict[str, str]:
    """The repository's first root and targets, and the director root: signed offline, accepted once."""
    await service.install_trust(
        releases_context(request),
        principal,
        _canonical(body.root),
        _canonical(body.targets),
        _canonical(body.director_root),
    )
    return {"status": "initialized"}


@router.post("/repository/root")
async def rotate_root(body: RootRequest, principal: Manager, request: Request) -> dict[str, int]:
    """The next root version (image repository and/or director), signed by the old and new thresholds."""
    if body.root is None and body.director_root is None:
        raise ProblemError("send root, director_root or both", code="invalid_request", status=422)
    versions = {}
    if body.root is not None:
        versions["root"] = await service.rotate_root(
            releases_context(request), principal, repository.IMAGE, _canonical(body.root)
        )
    if body.director_root is not None:
        versions["director_root"] = await service.rotate_root(
            releases_context(request), principal, repository.DIRECTOR, _canonical(body.director_root)
        )
    return versions


async def metadata_response(runtime: ReleasesContext, which: str, filename: str) -> Response:
    match = METADATA_FILE.match(filename)
    if match is None:
        raise NotFoundError("no such metadata", code="metadata_not_found")
    version, role = match.group(1), match.group(2)
    async with runtime.database.session() as session:
        content = await repository.metadata_bytes(session, which, role, int(version) if version else None)
    if content is None:
        raise NotFoundError("no such metadata", code="metadata_not_found")
    return Response(content, media_type="application/json", headers={"cache-control": "no-store"})


@router.get("/repository/metadata/{filename}")
async def image_metadata(filename: str, principal: Reader, request: Request) -> Response:
    """The image repository's metadata (`1.root.json`, `root.json` for the newest, `timestamp.json`, …);
    `targets.json` needs releases:read on all releases: it names every release."""
    match = METADATA_FILE.match(filename)
    if match is not None and match.group(2) == "targets":
        service.ensure_reads_every_release(principal, "targets.json")
    return await metadata_response(releases_context(request), repository.IMAGE, filename)


@router.get("/director/metadata/{filename}")
async def director_root(filename: str, principal: Reader, request: Request) -> Response:
    """The fleet-wide director root (`N.root.json`, or `root.json` for the newest)."""
    if not filename.endswith("root.json"):
        raise NotFoundError(
            "devices read their own director metadata on the device listener", code="metadata_not_found"
        )
    return await metadata_response(releases_context(request), repository.DIRECTOR, filename)


@router.get("/releases")
async def list_releases(
    principal: Reader,
    request: Request,
    name: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> ReleasePage:
    async with releases_context(request).database.session() as session:
        rows = await service.list_releases(session, principal, name=name, limit=limit + 1, after=cursor)
        items = [ReleaseOut.of(row, await service.release_tags(session, row.id)) for row in rows[:limit]]
    return ReleasePage(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


@router.get("/releases/{name}/{version}")
async def get_release(name: str, version: str, principal: Reader, request: Request) -> ReleaseDetail:
    """A release: signers, hashes, module type, device types, SBOM."""
    async with releases_context(request).database.session() as session:
        release = await service.get_release(session, principal, name, version, Permission.RELEASES_READ)
        tags = await service.release_tags(session, release.id)
    return ReleaseDetail(**ReleaseOut.of(release, tags).model_dump(), sbom=release.sbom)


class TagsRequest(RequestBody):
    tags: list[Annotated[str, Field(max_length=128)]] = Field(max_length=20)


@router.put("/releases/{name}/{version}/tags")
async def set_tags(
    name: str, version: str, body: TagsRequest, principal: Manager, request: Request
) -> list[str]:
    """Tags scope `releases:*` permissions."""
    return await service.set_tags(releases_context(request), principal, name, version, body.tags)


@router.get("/releases/{name}/{version}/bundle", response_class=StreamingResponse)
async def export_bundle(
    name: str,
    version: str,
    principal: Reader,
    request: Request,
    device_type: Annotated[str, Query(min_length=1, max_length=64)],
) -> StreamingResponse:
    """An offline bundle for air-gapped sites: the metadata chain and the target, as one tar. It
    carries targets.json, so it needs releases:read on all releases."""
    service.ensure_reads_every_release(principal, "an offline bundle")
    runtime = releases_context(request)
    async with runtime.database.session() as session:
        release = await service.get_release(session, principal, name, version, Permission.RELEASES_READ)
    members = await bundle_members(runtime, release, device_type)
    filename = f"{name}-{version}-{device_type}.fkb"
    return StreamingResponse(
        stream_bundle(runtime, release, members),
        media_type="application/x-tar",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@router.delete("/releases/{name}/{version}", status_code=204)
async def delete_release(name: str, version: str, principal: Manager, request: Request) -> Response:
    """Refused (409 release_in_use) while a deployment that has not ended (scheduled, active, paused)
    uses the release."""
    await service.delete_release(releases_context(request), principal, name, version)
    return Response(status_code=204)

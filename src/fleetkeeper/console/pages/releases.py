"""Releases: the catalogue and what each release is (signers, hashes, device types, SBOM)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.console.context import console_context
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page
from fleetkeeper.releases import service

router = APIRouter(include_in_schema=False)
Reader = Annotated[Principal, page(Permission.RELEASES_READ)]
PAGE_SIZE = 50


def sbom_components(sbom: dict[str, Any] | None) -> list[dict[str, str]]:
    """The CycloneDX components as table rows (only the fields the table shows, as text)."""
    components = sbom.get("components") if isinstance(sbom, dict) else None
    if not isinstance(components, list):
        return []
    rows = []
    for component in components:
        if not isinstance(component, dict):
            continue
        licenses = component.get("licenses")
        license_names = [
            str((entry.get("license") or {}).get("id") or (entry.get("license") or {}).get("name") or "")
            for entry in licenses or []
            if isinstance(entry, dict) and isinstance(entry.get("license"), dict)
        ]
        rows.append(
            {
                "name": str(component.get("name", "")),
                "version": str(component.get("version", "")),
                "type": str(component.get("type", "")),
                "purl": str(component.get("purl", "")),
                "licenses": ", ".join(name for name in license_names if name),
            }
        )
    return rows


def _file_name(name: str, version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}-{version}") + ".sbom.json"


@router.get("/releases")
async def releases(
    request: Request,
    principal: Reader,
    name: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    async with console_context(request).database.session() as session:
        rows = await service.list_releases(session, principal, name=name, limit=PAGE_SIZE + 1, after=cursor)
        items = [(row, await service.release_tags(session, row.id)) for row in rows[:PAGE_SIZE]]
    next_cursor = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    return render(
        request, "releases/list.html", principal, items=items, name=name or "", next_cursor=next_cursor
    )


@router.get("/releases/{name}/{version}")
async def release(request: Request, principal: Reader, name: str, version: str) -> Response:
    async with console_context(request).database.session() as session:
        found = await service.get_release(session, principal, name, version, Permission.RELEASES_READ)
        tags = await service.release_tags(session, found.id)
        policy = await service.targets_signing_policy(session)
    return render(
        request,
        "releases/detail.html",
        principal,
        release=found,
        tags=tags,
        policy=policy,
        components=sbom_components(found.sbom),
    )


@router.get("/releases/{name}/{version}/sbom.json")
async def sbom(request: Request, principal: Reader, name: str, version: str) -> Response:
    """The SBOM the release carries (signed: its digest is in the targets entry)."""
    async with console_context(request).database.session() as session:
        found = await service.get_release(session, principal, name, version, Permission.RELEASES_READ)
    if found.sbom is None:
        return render(
            request, "error.html", principal, status=404, title="no SBOM", detail="this release has no SBOM"
        )
    return Response(
        json.dumps(found.sbom, indent=2, sort_keys=True),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{_file_name(found.name, found.version)}"'},
    )

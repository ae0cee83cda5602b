"""The releases domain: installing trust, accepting releases, the catalogue, and keeping the image
repository's timestamp fresh. Other domains reach releases through this module."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from tuf.api.metadata import Key, Metadata, Root, Targets

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.audit.service import record
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ConflictError, ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.releases import repository, uploads
from fleetkeeper.releases.artifact import Artifact, read_artifact
from fleetkeeper.releases.context import ReleasesContext
from fleetkeeper.releases.errors import ReleaseError, ReleaseRefused
from fleetkeeper.releases.models import Release, ReleaseTag
from fleetkeeper.releases.schemas import ReleaseOut
from fleetkeeper.releases.trust import (
    check_initial_trust,
    check_root_update,
    director_online_keys,
    image_online_keys,
)
from fleetkeeper.releases.verification import verify_release


def _now() -> datetime:
    return utcnow().replace(microsecond=0)


def _refused(error: ReleaseError, status: int = 422) -> ProblemError:
    return ProblemError(error.detail, code=error.code, status=status)


def _ensure_whole_repository(principal: Principal) -> None:
    """Trust concerns every release: a releases:manage scoped to some tags does not reach it."""
    if principal.grants.scopes(Permission.RELEASES_MANAGE) is not None:
        raise ForbiddenError(
            "the repository's trust needs releases:manage on all releases",
            permission=Permission.RELEASES_MANAGE.value,
        )


def _parsed_as(content: bytes, kind: type[Any]) -> Metadata[Any]:
    try:
        metadata: Metadata[Any] = Metadata.from_bytes(content)
    except Exception as exc:  # python-tuf raises several kinds for malformed metadata
        raise ProblemError(
            f"the metadata does not parse: {exc}", code="invalid_metadata", status=422
        ) from None
    if not isinstance(metadata.signed, kind):
        raise ProblemError(f"expected {kind.type} metadata", code="invalid_metadata", status=422)
    return metadata


def online_public_keys(runtime: ReleasesContext) -> dict[str, Key]:
    from fleetkeeper.releases.online_keys import ONLINE_ROLES

    return {role: runtime.online_keys.key(role) for role in ONLINE_ROLES}


# --- trust --------------------------------------------------------------------------------------


async def install_trust(
    runtime: ReleasesContext, principal: Principal, root: bytes, targets: bytes, director_root: bytes
) -> None:
    """The first roots, signed offline; accepted once, when they name this server's online keys."""
    _ensure_whole_repository(principal)
    parsed = (_parsed_as(root, Root), _parsed_as(targets, Targets), _parsed_as(director_root, Root))
    try:
        check_initial_trust(*parsed, online_public_keys(runtime), _now())
    except ReleaseError as error:
        raise _refused(error) from None
    try:
        async with runtime.database.transaction() as session:
            if await repository.latest_row(session, repository.IMAGE, "root") is not None:
                raise ConflictError(
                    "the repository already has its trust; rotate the root instead",
                    code="already_initialized",
                )
            await repository.store(session, repository.IMAGE, parsed[0], root)
            await repository.store(session, repository.IMAGE, parsed[1], targets)
            await repository.store(session, repository.DIRECTOR, parsed[2], director_root)
            await repository.sign_snapshot_and_timestamp(session, runtime.online_keys, _now())
            await record(
                session,
                actor=principal.actor,
                action="repository.initialized",
                object_type="repository",
                object_id=repository.IMAGE,
                details={
                    "root_keys": sorted(parsed[0].signed.roles["root"].keyids),
                    "threshold": parsed[0].signed.roles["root"].threshold,
                },
            )
    except IntegrityError:
        raise ConflictError("the repository already has its trust", code="already_initialized") from None


async def rotate_root(runtime: ReleasesContext, principal: Principal, which: str, content: bytes) -> int:
    """Root vN+1, signed by the current root's threshold and its own."""
    _ensure_whole_repository(principal)
    new: Metadata[Root] = _parsed_as(content, Root)
    keys = online_public_keys(runtime)
    expected = image_online_keys(keys) if which == repository.IMAGE else director_online_keys(keys)
    async with runtime.database.transaction() as session:
        current = await repository.latest(session, which, "root")
        if current is None:
            raise ConflictError("there is no root yet: run `fleetkeeper trust init`", code="not_initialized")
        try:
            check_root_update(current, new, expected, _now())
        except ReleaseError as error:
            raise _refused(error) from None
        await repository.store(session, which, new, content)
        await record(
            session,
            actor=principal.actor,
            action="repository.root_rotated",
            object_type="repository",
            object_id=which,
            details={"version": new.signed.version, "root_keys": sorted(new.signed.roles["root"].keyids)},
        )
    return new.signed.version


# --- releases -----------------------------------------------------------------------------------


async def _chunks(artifact: Artifact) -> AsyncIterator[bytes]:
    iterator: Iterator[bytes] = artifact.iter_payload()
    while True:
        chunk = await asyncio.to_thread(next, iterator, None)
        if chunk is None:
            return
        yield chunk


async def publish_upload(runtime: ReleasesContext, principal: Principal, upload_id: str) -> ReleaseOut:
    """Verifies the uploaded artifact completely, then stores the payload, the new targets
    metadata and the re-signed snapshot and timestamp. A refusal leaves nothing behind."""
    upload = await uploads.get(runtime.database, principal, upload_id)
    path = await uploads.received_file(runtime.database, runtime.settings, principal, upload_id)
    object_key = None
    try:
        async with runtime.database.session() as session:
            root, current_targets = await repository.current_image_trust(session)
        artifact = await asyncio.to_thread(read_artifact, path, max_bytes=runtime.settings.max_release_bytes)
        verified = await asyncio.to_thread(
            verify_release,
            artifact,
            root,
            current_targets,
            max_bytes=runtime.settings.max_release_bytes,
            now=_now(),
        )
        manifest = artifact.release
        sha256 = verified.target.hashes["sha256"]
        directory, _, filename = artifact.target_path.rpartition("/")
        object_key = f"targets/{directory}/{sha256}.{filename}"
        await runtime.object_store.put(
            object_key, _chunks(artifact), length=artifact.payload_length, sha256=sha256
        )
        async with runtime.database.transaction() as session:
            newest = await repository.latest(session, repository.IMAGE, "targets")
            if newest is not None and verified.targets.signed.version <= newest.signed.version:
                raise ReleaseRefused(
                    "stale_metadata_version",
                    f"targets v{newest.signed.version} was accepted meanwhile: sign against it again",
                )
            release = Release(
                id=new_id("rel"),
                name=manifest["name"],
                version=manifest["version"],
                release_counter=manifest["release_counter"],
                module=manifest["module"],
                device_types=list(manifest["device_types"]),
                depends=dict(manifest.get("depends") or {}),
                provides=dict(manifest.get("provides") or {}),
                target_path=artifact.target_path,
                length=artifact.payload_length,
                sha256=sha256,
                object_key=object_key,
                sbom=json.loads(artifact.sbom) if artifact.sbom else None,
                sbom_sha256=(manifest.get("sbom") or {}).get("sha256"),
                targets_version=verified.targets.signed.version,
                signer_keyids=verified.signer_keyids,
                uploaded_by=principal.user_id,
                created_at=utcnow(),
            )
            session.add(release)
            await session.flush()
            for tag in upload.tags:
                session.add(ReleaseTag(release_id=release.id, tag=tag))
            await repository.store(session, repository.IMAGE, verified.targets, artifact.targets_json)
            await repository.sign_snapshot_and_timestamp(session, runtime.online_keys, _now())
            await record(
                session,
                actor=principal.actor,
                action="release.uploaded",
                object_type="release",
                object_id=release.id,
                details={
                    "name": release.name,
                    "version": release.version,
                    "release_counter": release.release_counter,
                    "sha256": sha256,
                    "targets_version": release.targets_version,
                    "signers": release.signer_keyids,
                    "tags": upload.tags,
                },
            )
        object_key = None  # kept: the release owns it now
        return await release_out(runtime, release.id)
    except ReleaseError as error:
        await _audit_refusal(runtime, principal, upload_id, error.code, error.detail)
        raise _refused(error, 413 if error.code == "payload_too_large" else 422) from None
    except IntegrityError:
        await _audit_refusal(
            runtime, principal, upload_id, "conflict", "a release or targets version like it exists"
        )
        raise ConflictError(
            "this release, or a targets metadata of this version, exists already",
            code="stale_metadata_version",
        ) from None
    finally:
        try:
            if object_key is not None:
                await _delete_unreferenced(runtime, object_key)
        finally:
            await uploads.discard(runtime.database, runtime.settings, upload_id)


async def _delete_unreferenced(runtime: ReleasesContext, object_key: str) -> None:
    """A refused upload's payload goes, unless an accepted release uses the same bytes."""
    async with runtime.database.session() as session:
        used = await session.scalar(select(exists().where(Release.object_key == object_key)))
    if not used:
        await runtime.object_store.delete(object_key)


async def _audit_refusal(
    runtime: ReleasesContext, principal: Principal, upload_id: str, code: str, detail: str
) -> None:
    async with runtime.database.transaction() as session:
        await record(
            session,
            actor=principal.actor,
            action="release.upload_refused",
            object_type="upload",
            object_id=upload_id,
            outcome="failure",
            details={"problem": code, "reason": detail},
        )


# --- the catalogue ------------------------------------------------------------------------------


async def release_tags(session: AsyncSession, release_id: str) -> list[str]:
    return sorted(await session.scalars(select(ReleaseTag.tag).where(ReleaseTag.release_id == release_id)))


async def release_out(runtime: ReleasesContext, release_id: str) -> ReleaseOut:
    async with runtime.database.session() as session:
        release = await session.get(Release, release_id)
        assert release is not None
        return ReleaseOut.of(release, await release_tags(session, release_id))


def ensure_reads_every_release(principal: Principal, what: str) -> None:
    """The image repository's targets metadata names every release, and it is signed offline: it
    cannot be cut down to a reader's release tags without breaking its signature. So it goes only
    to a reader of every release (releases:read unscoped), and so does anything that carries it."""
    if principal.grants.scopes(Permission.RELEASES_READ) is not None:
        raise ForbiddenError(
            f"{what} holds the signed targets metadata, which names every release: "
            "it needs releases:read on all releases",
            permission=Permission.RELEASES_READ.value,
        )


def _tag_scope_condition(principal: Principal, permission: Permission) -> Any:
    scopes = principal.grants.scopes(permission)
    if scopes is None:
        return True
    return exists().where(ReleaseTag.release_id == Release.id, ReleaseTag.tag.in_(sorted(scopes)))


async def list_releases(
    session: AsyncSession, principal: Principal, *, name: str | None, limit: int, after: str | None
) -> Sequence[Release]:
    query = select(Release).where(
        Release.deleted_at.is_(None), _tag_scope_condition(principal, Permission.RELEASES_READ)
    )
    if name:
        query = query.where(Release.name == name)
    if after:
        query = query.where(Release.id > after)
    return (await session.scalars(query.order_by(Release.id).limit(limit))).all()


async def releases_by_id(
    session: AsyncSession, principal: Principal, release_ids: Sequence[str]
) -> dict[str, Release]:
    """The releases among these that the caller may read (within their release tags), deleted
    ones included (a deployment names its release forever)."""
    rows = await session.scalars(
        select(Release).where(
            Release.id.in_(sorted(set(release_ids))),
            _tag_scope_condition(principal, Permission.RELEASES_READ),
        )
    )
    return {release.id: release for release in rows}


@dataclass(frozen=True)
class SigningPolicy:
    """Who may sign targets metadata, from the image repository's newest root."""

    threshold: int
    keyids: list[str]


async def targets_signing_policy(session: AsyncSession) -> SigningPolicy | None:
    content = await repository.metadata_bytes(session, repository.IMAGE, "root", None)
    if content is None:
        return None
    role = Metadata[Root].from_bytes(content).signed.roles[Targets.type]
    return SigningPolicy(role.threshold, sorted(role.keyids))


async def get_release(
    session: AsyncSession,
    principal: Principal,
    name: str,
    version: str,
    permission: Permission,
    *,
    lock: Literal["key_share", "update"] | None = None,
) -> Release:
    """The release, if the caller may read it (404 otherwise) and holds `permission` on it (403).
    `lock` holds its row until the caller's transaction ends: "key_share" for a row about to name
    it (a deployment), so that a deletion waits for that row and sees it; "update" for the
    deletion, which such a reader waits for, and then finds no release."""
    query = select(Release).where(
        Release.name == name, Release.version == version, Release.deleted_at.is_(None)
    )
    if lock is not None:
        query = query.with_for_update(key_share=lock == "key_share")
    release = await session.scalar(query)
    if release is None:
        raise NotFoundError(f"no release {name} {version}", code="release_not_found")
    tags = await release_tags(session, release.id)
    if not principal.can(permission, tags if principal.grants.scopes(permission) is not None else None):
        if not principal.can(Permission.RELEASES_READ, tags):
            raise NotFoundError(f"no release {name} {version}", code="release_not_found")
        principal.ensure(permission, tags, on=f"release {name} {version}")
    return release


async def set_tags(
    runtime: ReleasesContext, principal: Principal, name: str, version: str, tags: list[str]
) -> list[str]:
    tags = uploads.check_tags(principal, Permission.RELEASES_MANAGE, tags)
    scopes = principal.grants.scopes(Permission.RELEASES_MANAGE)
    async with runtime.database.transaction() as session:
        release = await get_release(session, principal, name, version, Permission.RELEASES_MANAGE)
        before = await release_tags(session, release.id)
        if scopes is not None:
            # Tags the caller does not manage stay: removing them would hide the release from others.
            tags = sorted(set(tags) | {tag for tag in before if tag not in scopes})
        for tag in before:
            await session.delete(await session.get(ReleaseTag, (release.id, tag)))
        await session.flush()
        for tag in tags:
            session.add(ReleaseTag(release_id=release.id, tag=tag))
        await record(
            session,
            actor=principal.actor,
            action="release.tags_changed",
            object_type="release",
            object_id=release.id,
            details={"name": name, "version": version, "before": before, "after": tags},
        )
    return tags


@dataclass(frozen=True)
class ReleaseInUse:
    """Why a release may not be deleted now, as the domain that uses it tells the caller: `reason`
    names what uses it and what to do first; `details` go into the refusal as they are."""

    reason: str
    details: dict[str, Any] = field(default_factory=dict)


# Asked with the deleting transaction's session, the caller, and the release's id.
InUseCheck = Callable[[AsyncSession, Principal, str], Awaitable[ReleaseInUse | None]]
_in_use_checks: list[InUseCheck] = []


def register_in_use_check(check: InUseCheck) -> None:
    """How another domain keeps a release it needs from being deleted: deployments registers its
    check when the composition root wires the domains (server/wiring.py). Registered twice, kept once."""
    if check not in _in_use_checks:
        _in_use_checks.append(check)


def in_use_checks() -> tuple[InUseCheck, ...]:
    return tuple(_in_use_checks)


async def delete_release(runtime: ReleasesContext, principal: Principal, name: str, version: str) -> None:
    """The payload goes; the target stays in signed metadata (the server cannot re-sign targets)
    but is no longer served, and the director never assigns it. Refused (409 release_in_use) while
    another domain needs the release. The row stays, marked deleted, so that what named the
    release (a finished deployment) still does."""
    async with runtime.database.transaction() as session:
        release = await get_release(
            session, principal, name, version, Permission.RELEASES_MANAGE, lock="update"
        )
        for check in _in_use_checks:
            use = await check(session, principal, release.id)
            if use is not None:
                raise ConflictError(
                    f"{name} {version} cannot be deleted: {use.reason}", code="release_in_use", **use.details
                )
        release.deleted_at = utcnow()
        object_key = release.object_key
        await record(
            session,
            actor=principal.actor,
            action="release.deleted",
            object_type="release",
            object_id=release.id,
            details={"name": name, "version": version},
        )
    await runtime.object_store.delete(object_key)


async def served_object(session: AsyncSession, object_key: str) -> Release | None:
    release: Release | None = await session.scalar(
        select(Release).where(Release.object_key == object_key, Release.deleted_at.is_(None))
    )
    return release


async def refresh_image_timestamp(runtime: ReleasesContext, now: datetime) -> int:
    """Re-signs the image repository's snapshot and timestamp when due (the metadata-refresh job,
    run by the director with its own). Returns how many were re-signed (0 or 1)."""
    async with runtime.database.transaction() as session:
        return int(await repository.refresh_if_due(session, runtime.online_keys, now))

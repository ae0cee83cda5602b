"""Each device's director metadata as stored and served: made the first time a device asks,
re-signed when what its deployments want changes, and re-signed by a background job before it
expires."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import utcnow
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.director.metadata import (
    DEFAULT_TIMESTAMP_EXPIRY,
    Assignment,
    DeviceMetadata,
    build_device_metadata,
    refresh_device_metadata,
)
from fleetkeeper.deployments.director.models import DirectorState
from fleetkeeper.releases import service as releases
from fleetkeeper.releases.models import Release


def signing_time() -> datetime:
    """Now, at whole seconds, as TUF metadata states its times."""
    return utcnow().replace(microsecond=0)


@dataclass(frozen=True)
class DirectorFiles:
    targets: bytes
    snapshot: bytes
    timestamp: bytes
    targets_version: int
    snapshot_version: int


async def _state(session: AsyncSession, device_id: str) -> DirectorState | None:
    state: DirectorState | None = await session.get(DirectorState, device_id, with_for_update=True)
    return state


def _previous(state: DirectorState | None) -> DeviceMetadata | None:
    return DeviceMetadata.from_bytes(state.targets, state.snapshot, state.timestamp) if state else None


def _save(
    session: AsyncSession,
    device_id: str,
    state: DirectorState | None,
    metadata: DeviceMetadata,
    target_path: str | None,
) -> None:
    values = {
        "target_path": target_path,
        "targets": metadata.targets_bytes(),
        "snapshot": metadata.snapshot_bytes(),
        "timestamp": metadata.timestamp_bytes(),
        "targets_version": metadata.targets.signed.version,
        "snapshot_version": metadata.snapshot.signed.version,
        "timestamp_expires": metadata.timestamp.signed.expires,
        "updated_at": utcnow(),
    }
    if state is None:
        session.add(DirectorState(device_id=device_id, **values))
    else:
        for key, value in values.items():
            setattr(state, key, value)


async def assign(
    runtime: DeploymentsContext, device_id: str, device_type: str, release: Release | None
) -> None:
    """What the device must run now; its director metadata is re-signed when this changes."""
    assignment = (
        Assignment(
            target_path=release.target_path,
            length=release.length,
            hashes={"sha256": release.sha256},
            device_id=device_id,
            device_type=device_type,
            release_counter=release.release_counter,
        )
        if release
        else None
    )
    async with runtime.database.transaction() as session:
        state = await _state(session, device_id)
        previous = _previous(state)
        metadata = build_device_metadata(runtime.online_keys, assignment, previous, now=signing_time())
        if metadata is not previous:
            _save(session, device_id, state, metadata, release.target_path if release else None)
            await record(
                session,
                actor=SYSTEM,
                action="director.assigned",
                object_type="device",
                object_id=device_id,
                details={
                    "target": release.target_path if release else None,
                    "targets_version": metadata.targets.signed.version,
                },
            )


async def director_state(session: AsyncSession, device_id: str) -> DirectorState | None:
    """The device's director metadata as served, read in the caller's session."""
    state: DirectorState | None = await session.get(DirectorState, device_id)
    return state


async def director_files(
    runtime: DeploymentsContext,
    device_id: str,
    device_type: str,
    *,
    check_in: bool,
    wanted: Release | None = None,
    state: DirectorState | None = None,
) -> DirectorFiles:
    """The device's current director metadata. At a check-in (`check_in`, with what the device's
    deployments want now) it is re-signed only when the assigned target changed: an unchanged
    check-in stays a read. Made, assigning nothing, the first time a device asks. `state` is the
    device's director state when the caller has just read it (`director_state`)."""
    if state is None:
        async with runtime.database.read() as session:
            state = await director_state(session, device_id)
    target = wanted.target_path if wanted else None
    if state is None or (check_in and state.target_path != target):
        await assign(runtime, device_id, device_type, wanted if check_in else None)
        async with runtime.database.session() as session:
            state = await director_state(session, device_id)
    assert state is not None
    return DirectorFiles(
        state.targets, state.snapshot, state.timestamp, state.targets_version, state.snapshot_version
    )


async def refresh_due_metadata(runtime: DeploymentsContext) -> int:
    """The background job: re-signs the image repository's timestamp (releases) and every device's
    director metadata before it expires. Returns how many were re-signed."""
    now = signing_time()
    count = await releases.refresh_image_timestamp(runtime, now)
    horizon = now + DEFAULT_TIMESTAMP_EXPIRY / 2
    while True:
        async with runtime.database.transaction() as session:
            states = (
                await session.scalars(
                    select(DirectorState)
                    .where(DirectorState.timestamp_expires < horizon)
                    .order_by(DirectorState.timestamp_expires)
                    .limit(500)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            refreshed_now = 0
            for state in states:
                previous = _previous(state)
                assert previous is not None
                refreshed = refresh_device_metadata(runtime.online_keys, previous, now=now)
                if refreshed is not None:
                    _save(session, state.device_id, state, refreshed, state.target_path)
                    refreshed_now += 1
        count += refreshed_now
        if refreshed_now == 0:
            return count

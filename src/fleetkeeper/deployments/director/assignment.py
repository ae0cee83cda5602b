"""The assignment rule: which deployment, and so which release, applies to a device now.

A device runs what its oldest open deployment wants: the oldest active deployment (a scheduled one
whose start has come counts as active) whose phase is open for the device and whose install is not
over for it, of a release not deleted. The rule is one statement, built once by
`assignment_query`, with the facts a still-pending device needs, each computed only for it:
whether it waits for a download slot (`queued`, when the deployment caps them) and whether its
inventory already reports the release (`installed`, unless the deployment forces a reinstall).
The general path (`current_assignment`) reads it whole; a check-in's single statement
(`director/checkin.py`) takes it as a subquery of three columns (`check_in_assignment`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, bindparam, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import BindParameter

from fleetkeeper.deployments import clock, installed_release
from fleetkeeper.deployments.chunks import chunk_phase
from fleetkeeper.deployments.models import FINAL_STATUSES, PENDING, Deployment, DeploymentDevice, not_pending
from fleetkeeper.deployments.reports import mark_already_installed
from fleetkeeper.deployments.windows import is_open, next_open, parse_windows
from fleetkeeper.devices.models import DeviceAttribute
from fleetkeeper.releases.models import Release

# A device in `downloading` holds one of its deployment's download slots (max_downloading) until
# it reports again; one silent for longer than this no longer does, so that a dead device does not
# hold a slot forever.
DOWNLOAD_SLOT_HELD_FOR = timedelta(minutes=30)


@dataclass(frozen=True)
class Assignment:
    """What a check-in finds for a device: its oldest open deployment, and whether the device waits
    for a download slot (`queued`: nothing is assigned from it yet)."""

    deployment: Deployment
    release: Release
    queued: bool


def check_in_parameters(device_id: str) -> dict[str, Any]:
    """The parameters of `assignment_query` and `check_in_assignment`."""
    now = clock.now()
    return {"device_id": device_id, "now": now, "slot_since": now - DOWNLOAD_SLOT_HELD_FOR}


@functools.cache
def _membership() -> tuple[ColumnElement[int], ColumnElement[str]]:
    """The device's phase and status in a deployment of the rule (parameter `device_id`): from its
    row when it has one, else from the chunk that holds it (pending; no phase when no chunk does:
    the device is not in the deployment)."""
    device_id: BindParameter[str] = bindparam("device_id", type_=DeploymentDevice.device_id.type)
    return (
        func.coalesce(DeploymentDevice.phase, chunk_phase(Deployment.number, device_id)),
        func.coalesce(DeploymentDevice.status, literal(PENDING)),
    )


@functools.cache
def _queued_and_installed() -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """Whether the still-pending device waits for a download slot of the deployment (parameter
    `slot_since`), and whether its inventory names the release (parameter `device_id`)."""
    pending = _membership()[1] == PENDING
    slot_holders = aliased(DeploymentDevice)
    downloading = (
        select(func.count())
        .select_from(slot_holders)
        .where(
            slot_holders.deployment_number == Deployment.number,
            slot_holders.status == "downloading",
            not_pending(slot_holders.status),
            slot_holders.updated_at >= bindparam("slot_since"),
        )
        .scalar_subquery()
    )
    name, version = aliased(DeviceAttribute), aliased(DeviceAttribute)
    runs_release = (
        select(literal(1))
        .select_from(name)
        .join(
            version,
            (version.device_id == name.device_id)
            & (version.key == installed_release.RELEASE_VERSION_KEY)
            & (version.value_text == Release.version),
        )
        .where(
            name.device_id == bindparam("device_id"),
            name.key == installed_release.RELEASE_NAME_KEY,
            name.value_text == Release.name,
        )
        .exists()
    )
    no_slot = Deployment.max_downloading.is_not(None) & pending & (downloading >= Deployment.max_downloading)
    return (
        case((no_slot, literal(True)), else_=literal(False)).label("queued"),
        case((~Deployment.force & pending & runs_release, literal(True)), else_=literal(False)).label(
            "installed"
        ),
    )


def assignment_query(*columns: Any) -> Select[Any]:
    """The rule, reading `columns` of the one deployment it finds for the device, followed by
    `queued` and `installed` (parameters: `check_in_parameters`)."""
    device_id: BindParameter[str] = bindparam("device_id")
    now: BindParameter[datetime] = bindparam("now")
    phase, status = _membership()
    return (
        select(*columns, *_queued_and_installed())
        .select_from(Deployment)
        .join(Release, Release.id == Deployment.release_id)
        .outerjoin(
            DeploymentDevice,
            (DeploymentDevice.deployment_number == Deployment.number)
            & (DeploymentDevice.device_id == device_id),
        )
        .where(
            # A scheduled deployment is active once its start time has come. The lists are of
            # literals: a list of values would be an expanding parameter, re-rendered at each run.
            Deployment.status.in_([literal("active"), literal("scheduled")]),
            (Deployment.start_at.is_(None)) | (Deployment.start_at <= now),
            phase <= Deployment.current_phase,
            status.not_in([literal(final) for final in FINAL_STATUSES]),
            Release.deleted_at.is_(None),
        )
        .order_by(Deployment.created_at, Deployment.id)
        .limit(1)
    )


# Both statements are built once: building one took longer than running it (the aliases and
# expressions of a statement this size).
@functools.cache
def _current_assignment_query() -> Select[Any]:
    return assignment_query(Deployment, Release, _membership()[0])


@functools.cache
def check_in_assignment() -> Subquery:
    """The rule as a subquery of a check-in's single statement: at most one row, the assigned
    release's `target_path`, `queued` and `installed`. When `installed`, the check-in must take
    the general path (`assignment_for`), which records the install and looks at the next
    deployment."""
    return assignment_query(Release.target_path.label("target_path")).subquery("assignment")


async def current_assignment(session: AsyncSession, device_id: str) -> Assignment | None:
    """The device's oldest open deployment, queued or not. A still-pending device that already
    runs the release (and the deployment does not force) is marked `already_installed` here — the
    only write a check-in can make, once per device and deployment — and the next one is looked at.

    `session` must not be in a write transaction: the already-installed mark commits on it."""
    while True:
        row = (await session.execute(_current_assignment_query(), check_in_parameters(device_id))).first()
        if row is None:
            return None
        deployment, release, phase, queued, runs_release = row
        if runs_release:
            await mark_already_installed(session, deployment.id, device_id, phase)
            continue
        return Assignment(deployment, release, bool(queued))


async def assignment_for(session: AsyncSession, device_id: str) -> tuple[Deployment, Release] | None:
    """The release the device must run now, for its director metadata: from its oldest open
    deployment; nothing while the device waits for a download slot of that deployment."""
    found = await current_assignment(session, device_id)
    if found is None or found.queued:
        return None
    return found.deployment, found.release


def install_window(deployment: Deployment) -> tuple[bool, datetime | None]:
    """Whether the device may install now (it may always download), and when it next may."""
    windows = parse_windows(deployment.windows)
    if not windows:
        return True, None
    now = clock.now()
    return is_open(windows, now), next_open(windows, now)

"""The device side of a deployment: a device's status reports (idempotent, ordered, counted, kept
in its history) and the install a check-in finds already done."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.db import WRITE_LOCK_UP_FRONT
from fleetkeeper.core.errors import NotFoundError, ProblemError
from fleetkeeper.deployments import clock, installed_release, lifecycle, progress
from fleetkeeper.deployments.chunks import phase_of
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.device_rows import first_row_columns, may_write_first_row
from fleetkeeper.deployments.models import (
    DEVICE_STATUSES,
    FINAL_STATUSES,
    PENDING,
    Deployment,
    DeploymentDevice,
    DeploymentEvent,
)
from fleetkeeper.deployments.statements import rowcount, upsert
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device

# The end of a device's log (detail) kept with its row and each history event.
DETAIL_KEPT = 4000


async def report(
    runtime: DeploymentsContext,
    device: Device,
    deployment_id: str,
    *,
    status: str,
    seq: int,
    detail: str | None,
) -> DeploymentDevice:
    """A device's progress on a deployment: idempotent (the same report again changes nothing)
    and ordered (an older sequence number is refused). Each accepted report moves the counters and
    is kept in the history; final reports move the deployment on."""
    if status not in DEVICE_STATUSES or status in ("pending", "aborted"):
        raise ProblemError(f"unknown status {status!r}", code="invalid_status", status=422)
    async with runtime.database.transaction() as session:
        # The deployment first, then the device's row: the order abort locks them in.
        deployment = await session.get(Deployment, deployment_id, with_for_update=True)
        entry = await _row_to_report_on(session, deployment, device.id) if deployment is not None else None
        if entry is None or deployment is None:
            raise NotFoundError("this device is not part of that deployment", code="not_in_deployment")
        if deployment.status == "scheduled" and (
            deployment.start_at is None or deployment.start_at <= clock.now()
        ):
            deployment.status = "active"
        if seq == entry.last_seq and status == entry.status:
            return entry
        if seq <= entry.last_seq:
            raise ProblemError(
                f"report {seq} is older than the last one received ({entry.last_seq})",
                code="out_of_order",
                status=409,
                last_seq=entry.last_seq,
            )
        if deployment.status == "aborted" and entry.status != "success":
            raise ProblemError(
                "the deployment was aborted: stop and keep what you run",
                code="deployment_aborted",
                status=409,
            )
        if entry.status in FINAL_STATUSES and entry.status != "failure":
            raise ProblemError(
                f"the install already ended ({entry.status})", code="already_final", status=409
            )
        previous = entry.status
        now = clock.now()
        entry.status = status
        entry.last_seq = seq
        entry.detail = (detail or "")[-DETAIL_KEPT:] or None
        entry.updated_at = now
        if status == "failure":
            entry.attempts += 1
            if entry.attempts <= deployment.max_retries:
                entry.status = "pending"  # tried again at its next check-in
        session.add(
            DeploymentEvent(
                deployment_id=deployment_id,
                device_id=device.id,
                seq=seq,
                status=status,
                detail=entry.detail,
                created_at=now,
            )
        )
        await session.flush()
        await progress.move_count(session, deployment_id, entry.phase, previous, entry.status)
        if status in FINAL_STATUSES:
            await record(
                session,
                actor=devices.device_actor(device, None),
                action=f"deployment.device_{status}",
                object_type="deployment",
                object_id=deployment_id,
                details={"device_id": device.id, "seq": seq, "detail": entry.detail},
            )
            await lifecycle.advance(session, deployment)
    return entry


async def _row_to_report_on(
    session: AsyncSession, deployment: Deployment, device_id: str
) -> DeploymentDevice | None:
    """The device's row in the deployment, locked; written first (pending) when the device is in
    one of the deployment's chunks and has no row yet. None: the device is not in it."""
    key = (deployment.number, device_id)
    entry = await session.get(DeploymentDevice, key, with_for_update=True)
    if entry is not None:
        return entry
    phase = await phase_of(session, deployment.number, device_id)
    if phase is None:
        return None
    await session.execute(
        upsert(session)(DeploymentDevice)
        .values(**first_row_columns(deployment.number, device_id, phase, PENDING))
        .on_conflict_do_nothing()  # a report of the same device in between wrote it: it is locked below
    )
    return await session.get(DeploymentDevice, key, with_for_update=True, populate_existing=True)


async def mark_already_installed(
    session: AsyncSession, deployment_id: str, device_id: str, phase: int
) -> None:
    """A still-pending device whose inventory reports the deployment's release: its row becomes
    `already_installed` (written first when it is chunk-only), counted, and the deployment moves
    on. The only write a check-in makes; `session` must not be in a write transaction."""
    # End the check-in's read transaction: the write is a transaction of its own, on SQLite one that
    # takes the write lock up front like Database.transaction (a read snapshot cannot be upgraded
    # once another writer committed), and it locks the deployment before the device's row, the
    # order report and abort lock them in.
    await session.commit()
    async with session.begin():
        await session.connection(execution_options={WRITE_LOCK_UP_FRONT: True})
        deployment = await session.get(
            Deployment, deployment_id, with_for_update=True, populate_existing=True
        )
        if deployment is None:
            return
        result = await session.execute(
            update(DeploymentDevice)
            .where(
                DeploymentDevice.deployment_number == deployment.number,
                DeploymentDevice.device_id == device_id,
                DeploymentDevice.status == "pending",
            )
            .values(
                status="already_installed", detail=installed_release.ALREADY_INSTALLED, updated_at=clock.now()
            )
            .execution_options(synchronize_session=False)
        )
        if not rowcount(result) and await may_write_first_row(session, deployment, device_id):
            result = await session.execute(
                upsert(session)(DeploymentDevice)
                .values(
                    first_row_columns(deployment.number, device_id, phase, "already_installed")
                    | {"detail": installed_release.ALREADY_INSTALLED, "updated_at": clock.now()}
                )
                .on_conflict_do_nothing()
            )
        if not rowcount(result):
            return  # the device reported in between (its report wins), or it is pending here no more
        await progress.move_count(session, deployment_id, phase, "pending", "already_installed")
        await record(
            session,
            actor=SYSTEM,
            action="deployment.device_already_installed",
            object_type="deployment",
            object_id=deployment_id,
            details={"device_id": device_id, "found_at": "check-in"},
        )
        await lifecycle.advance(session, deployment)

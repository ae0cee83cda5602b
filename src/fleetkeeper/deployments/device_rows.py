"""A device's row in a deployment, and the devices that have none yet.

A fixed target is written as chunks of device ids (chunks.py); a device of a chunk gets its row in
deployment_devices only when something happens to it (its first report, an install found in its
inventory). Until then it is a "chunk-only" device: pending, or aborted with its deployment (abort
moves the rows' statuses and every count, not the chunks), and shown as a row that is not stored."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.deployments.chunks import phase_of
from fleetkeeper.deployments.models import PENDING, Deployment, DeploymentChunk, DeploymentDevice


def first_row_columns(deployment_number: int, device_id: str, phase: int, status: str) -> dict[str, Any]:
    """A device's row before anything happened to it: the row a chunk's device is first written
    with, and how a chunk-only device is shown."""
    return {
        "deployment_number": deployment_number,
        "device_id": device_id,
        "phase": phase,
        "status": status,
        "attempts": 0,
        "last_seq": 0,
        "updated_at": None,
        "detail": None,
    }


async def may_write_first_row(session: AsyncSession, deployment: Deployment, device_id: str) -> bool:
    """The device has no row, only its chunk, in a deployment that is not aborted: its first row
    may be written. (After an abort, or once a live deployment dropped its row, it may not.)"""
    return (
        deployment.status != "aborted" and await phase_of(session, deployment.number, device_id) is not None
    )


def has_no_row(device_id: ColumnElement[str]) -> ColumnElement[bool]:
    """A chunk's device `device_id` has no row in the chunk's deployment: it is chunk-only."""
    return ~(
        select(DeploymentDevice.device_id)
        .where(
            DeploymentDevice.deployment_number == DeploymentChunk.deployment_number,
            DeploymentDevice.device_id == device_id,
        )
        .exists()
    )


def chunk_only_status(deployment: Deployment) -> str:
    """The status of a chunk-only device: pending, or aborted with its deployment."""
    return "aborted" if deployment.status == "aborted" else PENDING


def chunk_only_entry(deployment: Deployment, device_id: str, phase: int) -> DeploymentDevice:
    """How a chunk-only device is shown: a row that is not in the session."""
    return DeploymentDevice(
        **first_row_columns(deployment.number, device_id, phase, chunk_only_status(deployment))
    )

"""Tables of the deployments domain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, PrimaryKeyConstraint, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeeper.core.db import Base, UTCDateTime, utcnow

# active: devices in open phases are told to install; paused/aborted/finished: nobody new is.
DEPLOYMENT_STATUSES = ("scheduled", "active", "paused", "finished", "aborted")
# What a device reports, in the order an install goes through them (reports never go back).
DEVICE_STATUSES = (
    "pending",
    "downloading",
    "downloaded",
    "deferred",
    "installing",
    "rebooting",
    "success",
    "failure",
    "refused",
    "already_installed",
    "aborted",
)
FINAL_STATUSES = ("success", "failure", "refused", "already_installed", "aborted")
# How the statistics group the statuses (a failure that will be retried is back to pending).
SUCCEEDED_STATUSES = ("success", "already_installed")
FAILED_STATUSES = ("failure", "refused")
IN_PROGRESS_STATUSES = ("downloading", "downloaded", "deferred", "installing", "rebooting")


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="RESTRICT"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"devices": [...]} | {"group": name, "live": bool}
    # [{"size": {"percent": 10} | {"count": 5}, "advance": "auto" | "manual", "success_percent": 90}]
    phases: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    current_phase: Mapped[int] = mapped_column(Integer, default=0)
    failure_threshold: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    windows: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    max_downloading: Mapped[int | None] = mapped_column(Integer)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    # The failures an operator accepted by resuming: {"phase": index, "in_phase": n, "overall": n}.
    # Thresholds count only the failures after them, or a resumed deployment would pause again at
    # the next report.
    accepted_failures: Mapped[dict[str, int] | None] = mapped_column(JSON)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeploymentDevice(Base):
    """One device of a deployment: its phase and where its install stands.

    No foreign keys, on purpose: a fan-out writes a million rows at once and their per-row checks
    cost three times the insert itself. The rows are written only by the fan-out, from devices and
    a deployment that exist, and neither devices nor deployments are ever deleted.

    Two indexes, each maintained row by row during a fan-out, and each needed: the key leads with
    the device, so a check-in finds its device's rows (and a report its row) through the key
    itself; the status index serves a deployment's devices by status (see below)."""

    __tablename__ = "deployment_devices"
    __table_args__ = (
        PrimaryKeyConstraint("device_id", "deployment_id", name="pk_deployment_devices"),
        # A deployment's devices by status, in id order: the devices list (keyset on status and
        # id), the download cap's count of who is downloading now, abort's update of those not
        # done. It replaced (deployment_id, phase, status), which counted progress before the
        # counters (deployment_counts) did: still two indexes to maintain in a fan-out.
        Index("ix_deployment_devices_status", "deployment_id", "status", "device_id"),
    )

    deployment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    phase: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Identity stays (deployment_id, device_id), as session.get callers pass it; only the
    # constraint's column order above is the device's first.
    __mapper_args__ = {"primary_key": (deployment_id, device_id)}  # noqa: RUF012 (declarative reads it once)


class DeploymentCount(Base):
    """How many devices of a deployment are in each phase and status, kept in the transaction of
    every status change, so that progress is read from a few rows instead of counted over a
    million. The counts of a deployment always equal a GROUP BY over its deployment_devices."""

    __tablename__ = "deployment_counts"

    deployment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class DeploymentEvent(Base):
    """One status report of a device on a deployment, kept as its history. A device numbers its
    reports (seq) and the server accepts each number once, in order: (deployment, device, seq) is
    unique and orders the history."""

    __tablename__ = "deployment_events"

    deployment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

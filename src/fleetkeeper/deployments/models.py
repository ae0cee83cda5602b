"""Tables of the deployments domain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Sequence,
    SQLColumnExpression,
    String,
    Text,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeeper.core.db import Base, UTCDateTime, utcnow

# active: devices in open phases are told to install; paused/aborted/finished: nobody new is.
DEPLOYMENT_STATUSES = ("scheduled", "active", "paused", "finished", "aborted")
# Deployments that still move devices (the dashboard's "active deployments").
UNDER_WAY_STATUSES = ("active", "paused")
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
    # Names the deployment in deployment_devices, a million times over: 4 bytes instead of the
    # id's 31 in each row and key (see DeploymentDevice). Internal: the API names deployments by
    # id. From NUMBERS on PostgreSQL (rollout.next_number).
    number: Mapped[int] = mapped_column(Integer, unique=True)
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


# The one status a fan-out writes, left out of the status index (see DeploymentDevice).
PENDING = "pending"


class DeploymentDevice(Base):
    """One device of a deployment: its phase and where its install stands. Written at the
    device's first report (or already-installed mark) when it came in a chunk (DeploymentChunk),
    at once for a live target's devices; from then on this row is what counts.

    A live fan-out writes a million of these at once, so the row and its indexes are kept as
    narrow as the queries allow (docs/benchmarks.md, deployment creation):

    - the deployment is named by its `number`, an integer, not by its 30-character id;
    - no foreign keys: their per-row checks cost three times the insert itself. The rows are
      written only from devices and a deployment that exist, and neither is ever deleted;
    - one index written by the fan-out, the key (deployment_number, device_id), which a fan-out
      appends to in order. It serves a report's and a check-in's row (a check-in probes it once
      per open deployment), a deployment's devices in id order, and a device's deployments
      (one probe per deployment);
    - the status index holds only rows that left `pending`, so a fan-out writes nothing to it
      (but the rows of devices that run the release already). It serves a deployment's devices
      in a status other than pending (the devices list, the download cap's count of who is
      downloading). A query that wants it repeats its condition (`not_pending`): SQLite uses a
      partial index only then, and PostgreSQL so also under a generic plan."""

    __tablename__ = "deployment_devices"
    __table_args__ = (
        PrimaryKeyConstraint("deployment_number", "device_id", name="pk_deployment_devices"),
        Index(
            "ix_deployment_devices_status",
            "deployment_number",
            "status",
            "device_id",
            postgresql_where=text(f"status <> '{PENDING}'"),
            sqlite_where=text(f"status <> '{PENDING}'"),
        ),
    )

    # Fixed-width columns first: no alignment padding between them in a PostgreSQL row.
    deployment_number: Mapped[int] = mapped_column(Integer)
    phase: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    device_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default=PENDING)
    detail: Mapped[str | None] = mapped_column(Text)


# Devices per chunk. A check-in that looks for a device reads its chunk whole: 200 ids of 30
# characters (new_id's) take 7.2 kB, which stays within the row's page (TOAST_TUPLE_TARGET).
CHUNK_SIZE = 200
TOAST_TUPLE_TARGET = 8160  # PostgreSQL's largest


class DeploymentChunk(Base):
    """Devices of a deployment written at its creation, up to CHUNK_SIZE per row, in id order:
    `device_ids` (an array on PostgreSQL, a JSON list on SQLite) between `first_device_id` and
    `last_device_id`, all in one phase. A device starts without a row in deployment_devices and is
    pending while it has none; its first report (or the already-installed mark) writes its row,
    which from then on is what counts. See docs/deployments.md.

    A million devices are 5,000 rows here instead of a million rows and key entries: this is
    what makes creating a deployment for a whole fleet fast (docs/benchmarks.md). The chunks of a
    deployment never overlap (one ordered pass at creation, never changed), so the one chunk that
    can hold a device is the last one starting at or before its id."""

    __tablename__ = "deployment_chunks"
    # A chunk stays in its row, uncompressed, up to a page: a check-in reads it with one buffer
    # (out of line, a chunk's ids would be read from many pages and decompressed at each check-in).
    __table_args__ = ({"postgresql_with": {"toast_tuple_target": TOAST_TUPLE_TARGET}},)

    deployment_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_device_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_device_id: Mapped[str] = mapped_column(String(40))
    phase: Mapped[int] = mapped_column(Integer)
    device_ids: Mapped[list[str]] = mapped_column(JSON().with_variant(ARRAY(String(40)), "postgresql"))


# Deployment numbers on PostgreSQL (created by migration 0013; SQLite counts on from the highest).
NUMBERS = Sequence("deployments_number_seq")


def not_pending(status: SQLColumnExpression[str]) -> ColumnElement[bool]:
    """The status index's condition, written as the index has it, for a query that uses the index
    (see DeploymentDevice); `status` is DeploymentDevice.status or an alias's."""
    return status != literal_column(f"'{PENDING}'")


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

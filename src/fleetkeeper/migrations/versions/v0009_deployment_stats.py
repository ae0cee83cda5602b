"""deployment statistics: per-phase counters, device report history, index by status

(deployment_id, status, device_id) replaces (deployment_id, phase, status): progress is counted in
deployment_counts now, and a fan-out keeps maintaining two indexes, not three.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fleetkeeper.core.db import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_counts",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id", "phase", "status", name=op.f("pk_deployment_counts")),
    )
    op.create_table(
        "deployment_events",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id", "device_id", "seq", name=op.f("pk_deployment_events")),
    )
    with op.batch_alter_table("deployment_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_devices_progress")
        batch_op.create_index(
            "ix_deployment_devices_status", ["deployment_id", "status", "device_id"], unique=False
        )
    # Deployments that exist already get their counters from what their devices' rows say.
    op.execute(
        "INSERT INTO deployment_counts (deployment_id, phase, status, count) "
        "SELECT deployment_id, phase, status, count(*) FROM deployment_devices "
        "GROUP BY deployment_id, phase, status"
    )


def downgrade() -> None:
    with op.batch_alter_table("deployment_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_devices_status")
        batch_op.create_index(
            "ix_deployment_devices_progress", ["deployment_id", "phase", "status"], unique=False
        )
    op.drop_table("deployment_events")
    op.drop_table("deployment_counts")

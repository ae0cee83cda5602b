"""deployments

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fleetkeeper.core.db import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("release_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("phases", sa.JSON(), nullable=False),
        sa.Column("current_phase", sa.Integer(), nullable=False),
        sa.Column("failure_threshold", sa.JSON(), nullable=False),
        sa.Column("windows", sa.JSON(), nullable=False),
        sa.Column("start_at", UTCDateTime(), nullable=True),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("max_downloading", sa.Integer(), nullable=True),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_deployments_release_id_releases"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployments_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployments_release_id"), ["release_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployments_status"), ["status"], unique=False)

    op.create_table(
        "deployment_devices",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        # No foreign keys: see DeploymentDevice (a fan-out of a million rows).
        sa.PrimaryKeyConstraint("deployment_id", "device_id", name=op.f("pk_deployment_devices")),
    )
    with op.batch_alter_table("deployment_devices", schema=None) as batch_op:
        batch_op.create_index("ix_deployment_devices_device_status", ["device_id", "status"], unique=False)
        batch_op.create_index(
            "ix_deployment_devices_progress", ["deployment_id", "phase", "status"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deployment_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_devices_progress")
        batch_op.drop_index("ix_deployment_devices_device_status")

    op.drop_table("deployment_devices")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_status"))
        batch_op.drop_index(batch_op.f("ix_deployments_release_id"))
        batch_op.drop_index(batch_op.f("ix_deployments_created_at"))

    op.drop_table("deployments")

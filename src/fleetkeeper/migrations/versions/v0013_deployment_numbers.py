"""deployment_devices names its deployment by a number; the status index leaves pending rows out

A fan-out writes a row per device: each row and key entry now holds a 4-byte deployment number
instead of the 30-character id, the key leads with the deployment (a fan-out appends to it), and
the status index no longer takes the fan-out's pending rows (docs/benchmarks.md, deployment
creation). Existing deployments are numbered in creation order; their rows are copied.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fleetkeeper.core.db import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_LEFT = sa.text("status <> 'pending'")


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _set_aside_rows() -> None:
    """Renames deployment_devices out of the way with its indexes dropped, so that the new table
    can take their names."""
    op.drop_index("ix_deployment_devices_status", table_name="deployment_devices")
    op.rename_table("deployment_devices", "deployment_devices_old")
    if _postgresql():  # the key's index keeps its name across the rename on PostgreSQL
        op.drop_constraint("pk_deployment_devices", "deployment_devices_old", type_="primary")


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("number", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE deployments SET number = ranked.number FROM "
        "(SELECT id, row_number() OVER (ORDER BY created_at, id) AS number FROM deployments) AS ranked "
        "WHERE ranked.id = deployments.id"
    )
    with op.batch_alter_table("deployments") as batch:
        batch.alter_column("number", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_deployments_number", ["number"])
    if _postgresql():
        # models.NUMBERS, which create() draws from: it goes on after the numbers just given.
        op.execute("CREATE SEQUENCE deployments_number_seq OWNED BY deployments.number")
        op.execute(
            "SELECT setval('deployments_number_seq', coalesce(max(number), 0) + 1, false) FROM deployments"
        )

    _set_aside_rows()
    op.create_table(
        "deployment_devices",
        sa.Column("deployment_number", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("deployment_number", "device_id", name="pk_deployment_devices"),
    )
    op.execute(
        "INSERT INTO deployment_devices "
        "(deployment_number, device_id, phase, status, attempts, last_seq, detail, updated_at) "
        "SELECT deployments.number, old.device_id, old.phase, old.status, old.attempts, old.last_seq, "
        "old.detail, old.updated_at "
        "FROM deployment_devices_old AS old JOIN deployments ON deployments.id = old.deployment_id"
    )
    op.drop_table("deployment_devices_old")
    op.create_index(
        "ix_deployment_devices_status",
        "deployment_devices",
        ["deployment_number", "status", "device_id"],
        postgresql_where=PENDING_LEFT,
        sqlite_where=PENDING_LEFT,
    )


def downgrade() -> None:
    _set_aside_rows()
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
        sa.PrimaryKeyConstraint("device_id", "deployment_id", name="pk_deployment_devices"),
    )
    op.execute(
        "INSERT INTO deployment_devices "
        "(deployment_id, device_id, phase, status, attempts, last_seq, detail, updated_at) "
        "SELECT deployments.id, old.device_id, old.phase, old.status, old.attempts, old.last_seq, "
        "old.detail, old.updated_at "
        "FROM deployment_devices_old AS old JOIN deployments ON deployments.number = old.deployment_number"
    )
    op.drop_table("deployment_devices_old")
    op.create_index(
        "ix_deployment_devices_status", "deployment_devices", ["deployment_id", "status", "device_id"]
    )

    if _postgresql():
        op.execute("DROP SEQUENCE deployments_number_seq")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("uq_deployments_number", type_="unique")
        batch.drop_column("number")

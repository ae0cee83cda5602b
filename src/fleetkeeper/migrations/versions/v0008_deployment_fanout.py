"""deployment fan-out: two indexes on deployment_devices instead of three

The primary key leads with the device, which serves a check-in's lookup by device; the separate
(device_id, status) index is gone (each index costs about a second per million fanned-out rows).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_devices_device_status")
        batch_op.drop_constraint("pk_deployment_devices", type_="primary")
        batch_op.create_primary_key("pk_deployment_devices", ["device_id", "deployment_id"])


def downgrade() -> None:
    with op.batch_alter_table("deployment_devices", schema=None) as batch_op:
        batch_op.drop_constraint("pk_deployment_devices", type_="primary")
        batch_op.create_primary_key("pk_deployment_devices", ["deployment_id", "device_id"])
        batch_op.create_index("ix_deployment_devices_device_status", ["device_id", "status"], unique=False)

"""deployment_chunks: a deployment's devices as chunks of ids, rows only once a device acts

Creating a deployment writes its devices 200 to a row here instead of a row and a key
entry each in deployment_devices (docs/benchmarks.md, deployment creation). Existing deployments
keep their rows, which stay what counts. Downgrading writes a row for every device that has only
its chunk (pending, or aborted with an aborted deployment), then drops the chunks.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_chunks",
        sa.Column("deployment_number", sa.Integer(), nullable=False),
        sa.Column("first_device_id", sa.String(length=40), nullable=False),
        sa.Column("last_device_id", sa.String(length=40), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column(
            "device_ids",
            sa.JSON().with_variant(postgresql.ARRAY(sa.String(length=40)), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("deployment_number", "first_device_id", name="pk_deployment_chunks"),
        # Chunks stay in their rows uncompressed (models.DeploymentChunk): read with one buffer.
        postgresql_with={"toast_tuple_target": 8160},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        members = "deployment_chunks AS chunk CROSS JOIN LATERAL unnest(chunk.device_ids) AS member(value)"
    else:
        members = "deployment_chunks AS chunk CROSS JOIN json_each(chunk.device_ids) AS member"
    # No value from outside in this SQL: the two spellings above.
    op.execute(
        "INSERT INTO deployment_devices "  # noqa: S608
        "(deployment_number, device_id, phase, status, attempts, last_seq) "
        "SELECT chunk.deployment_number, member.value, chunk.phase, "
        "CASE WHEN deployments.status = 'aborted' THEN 'aborted' ELSE 'pending' END, 0, 0 "
        f"FROM {members} JOIN deployments ON deployments.number = chunk.deployment_number "
        "WHERE NOT EXISTS (SELECT 1 FROM deployment_devices AS existing "
        "WHERE existing.deployment_number = chunk.deployment_number AND existing.device_id = member.value)"
    )
    op.drop_table("deployment_chunks")

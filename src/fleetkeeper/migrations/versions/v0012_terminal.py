"""terminal sessions and file transfers

Revision ID: 0012
Revises: 0010
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fleetkeeper.core.db import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "terminal_sessions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("close_reason", sa.String(length=64), nullable=True),
        sa.Column("exit_status", sa.BigInteger(), nullable=True),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("recording_key", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_terminal_sessions")),
    )
    with op.batch_alter_table("terminal_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_terminal_sessions_device_open", ["device_id", "closed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_terminal_sessions_opened_at"), ["opened_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_terminal_sessions_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_table("terminal_sessions")

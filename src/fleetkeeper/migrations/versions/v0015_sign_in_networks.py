"""sign_in_networks: the networks each account signed in from lately

The account-wide sign-in back-off does not hold back a sign-in from one of them
(access/known_networks.py). Downgrading drops the table: sign-ins then wait as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fleetkeeper.core.db import UTCDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_in_networks",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("last_sign_in_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sign_in_networks_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "network", name=op.f("pk_sign_in_networks")),
    )


def downgrade() -> None:
    op.drop_table("sign_in_networks")

"""releases

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fleetkeeper.core.db import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "release_uploads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_uploads")),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("release_counter", sa.BigInteger(), nullable=False),
        sa.Column("module", sa.String(length=64), nullable=False),
        sa.Column("device_types", sa.JSON(), nullable=False),
        sa.Column("depends", sa.JSON(), nullable=False),
        sa.Column("provides", sa.JSON(), nullable=False),
        sa.Column("target_path", sa.String(length=300), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("object_key", sa.String(length=500), nullable=False),
        sa.Column("sbom", sa.JSON(), nullable=True),
        sa.Column("sbom_sha256", sa.String(length=64), nullable=True),
        sa.Column("targets_version", sa.Integer(), nullable=False),
        sa.Column("signer_keyids", sa.JSON(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_releases")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_releases_name_version")),
        sa.UniqueConstraint("target_path", name=op.f("uq_releases_target_path")),
    )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_releases_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_releases_name"), ["name"], unique=False)

    op.create_table(
        "repository_metadata",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repository", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repository_metadata")),
        sa.UniqueConstraint(
            "repository", "role", "version", name=op.f("uq_repository_metadata_repository_role_version")
        ),
    )
    op.create_table(
        "director_state",
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("target_path", sa.String(length=300), nullable=True),
        sa.Column("targets", sa.LargeBinary(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp", sa.LargeBinary(), nullable=False),
        sa.Column("targets_version", sa.Integer(), nullable=False),
        sa.Column("snapshot_version", sa.Integer(), nullable=False),
        sa.Column("timestamp_expires", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_director_state_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_director_state")),
    )
    with op.batch_alter_table("director_state", schema=None) as batch_op:
        batch_op.create_index("ix_director_state_timestamp_expires", ["timestamp_expires"], unique=False)

    op.create_table(
        "release_tags",
        sa.Column("release_id", sa.String(length=40), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_release_tags_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("release_id", "tag", name=op.f("pk_release_tags")),
    )
    with op.batch_alter_table("release_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_release_tags_tag"), ["tag"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("release_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_tags_tag"))

    op.drop_table("release_tags")
    with op.batch_alter_table("director_state", schema=None) as batch_op:
        batch_op.drop_index("ix_director_state_timestamp_expires")

    op.drop_table("director_state")
    op.drop_table("repository_metadata")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_releases_name"))
        batch_op.drop_index(batch_op.f("ix_releases_created_at"))

    op.drop_table("releases")
    op.drop_table("release_uploads")

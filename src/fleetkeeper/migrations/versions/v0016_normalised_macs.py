"""normalised MACs: every stored MAC in lower case, colon-separated

A device's MAC was stored as it was given, lower-cased but with its separators: an operator's
"AA-BB-CC-DD-EE-FF" and an agent's "aa:bb:cc:dd:ee:ff" read as two MACs to filters and groups.
Since identity.normalised_mac, both are stored as aa:bb:cc:dd:ee:ff; this brings the values
stored before to that form, in the devices' mac column, their identity, and the identity.mac
attribute that filters read.

Nothing is refused, merged or dropped: the MAC is not unique, so two devices whose MACs become
equal both stay, each with the normalised value. Each such MAC is logged as a warning with the
devices that share it, for an operator to look at (docs/devices.md, "Identity"). Downgrading
changes nothing: the older code takes the normalised form, and the original separators are gone.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_log = logging.getLogger("fleetkeeper.migrations")

_devices = sa.table(
    "devices",
    sa.column("id", sa.String),
    sa.column("mac", sa.String),
    sa.column("identity", sa.JSON),
)
_attributes = sa.table(
    "device_attributes",
    sa.column("device_id", sa.String),
    sa.column("key", sa.String),
    sa.column("value_text", sa.String),
)


def _normalised(mac: str) -> str:
    # identity.normalised_mac as of this revision (a migration does not follow later code).
    return mac.lower().replace("-", ":")


def upgrade() -> None:
    connection = op.get_bind()
    sharing: dict[str, list[str]] = {}
    for device_id, mac, identity in connection.execute(
        sa.select(_devices.c.id, _devices.c.mac, _devices.c.identity).where(_devices.c.mac.is_not(None))
    ):
        normalised = _normalised(mac)
        sharing.setdefault(normalised, []).append(device_id)
        claimed = (identity or {}).get("mac")
        if normalised == mac and (claimed is None or claimed == normalised):
            continue
        if claimed is not None:
            identity = {**identity, "mac": _normalised(claimed)}
        connection.execute(
            sa.update(_devices).where(_devices.c.id == device_id).values(mac=normalised, identity=identity)
        )
        connection.execute(
            sa.update(_attributes)
            .where(_attributes.c.device_id == device_id, _attributes.c.key == "identity.mac")
            .values(value_text=normalised)
        )
    for mac, device_ids in sorted(sharing.items()):
        if len(device_ids) > 1:
            _log.warning(
                "devices %s share the MAC %s once normalised: each keeps it",
                ", ".join(sorted(device_ids)),
                mac,
            )


def downgrade() -> None:
    pass

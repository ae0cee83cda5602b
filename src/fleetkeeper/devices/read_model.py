"""What devices export on purpose for other domains' statements: the device identity of a
certificate followed by another domain's columns, in one statement (a hot route's whole read), and
the row split back into the identity and those columns. The identity's columns and their number
stay here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select

from fleetkeeper.core.peer import PeerCertificate
from fleetkeeper.devices.auth import IDENTITY_COLUMNS, DeviceIdentity, identity_of, identity_query
from fleetkeeper.devices.models import Device


def identity_with(
    *columns: Any,
    keyed_by_device: Iterable[Any] = (),
    outer_joins: Iterable[tuple[FromClause, ColumnElement[bool]]] = (),
) -> Select[Any]:
    """The identity of the certificate whose serial is bound as `serial` (`serial_parameter`),
    then `columns`: from the tables of `keyed_by_device` (outer-joined on their `device_id`) and
    of `outer_joins` (each with its ON clause)."""
    joins = [(table.__table__, table.device_id == Device.id) for table in keyed_by_device]
    return identity_query(*columns, outer_joins=[*joins, *outer_joins])


def identity_and_rest(
    peer: PeerCertificate, row: Sequence[Any] | None
) -> tuple[DeviceIdentity, tuple[Any, ...]]:
    """The checks of `authenticate` on a row of `identity_with` (None: no such certificate), and
    the row's other columns."""
    device = identity_of(peer, row)
    assert row is not None
    return device, tuple(row)[IDENTITY_COLUMNS:]

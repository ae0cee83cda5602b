"""A device check-in that changes nothing, in one statement.

Most check-ins find that the device's director metadata already names what its deployments want
now, and serve the stored timestamp. That answer needs the device's identity (certificate, status),
its director state and its current assignment: all three are read here in one statement, one round
trip to the database, and compared. Nothing is cached between check-ins, so a change of deployment
(created, paused, phase advanced, aborted, the device's report) is seen by the very next one on any
replica. Anything else — a new assignment to sign, a device whose inventory already reports the
release, no director state yet — returns None and the check-in takes the general path
(`device_api.director_metadata`), which reads again and writes.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Select, true

from fleetkeeper.core.peer import PeerCertificate
from fleetkeeper.deployments import service as deployments
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.auth import IDENTITY_COLUMNS, identity_of, identity_query, serial_parameter
from fleetkeeper.devices.models import Device
from fleetkeeper.releases.context import ReleasesContext
from fleetkeeper.releases.models import DirectorState


@functools.cache
def _check_in_query() -> Select[Any]:
    assignment = deployments.check_in_assignment()
    return identity_query(
        DirectorState.target_path,
        DirectorState.timestamp,
        assignment.c.target_path,
        assignment.c.queued,
        assignment.c.installed,
        outer_joins=[
            (DirectorState.__table__, DirectorState.device_id == Device.id),
            (assignment, true()),
        ],
    )


async def unchanged_timestamp(runtime: ReleasesContext, peer: PeerCertificate) -> bytes | None:
    """The device's stored director timestamp when its check-in changes nothing, else None.

    Raises what `authenticate` raises for a certificate that is not an accepted device's."""
    parameters = {**serial_parameter(peer), **deployments.check_in_parameters(peer.common_name)}
    # Every check-in has its own certificate and device; `now` is shared by the check-ins sent together.
    row = await runtime.database.read_row(_check_in_query(), parameters, batch_by=("serial", "device_id"))
    device = identity_of(peer, row)
    assert row is not None
    served_target, timestamp, wanted_target, queued, installed = row[IDENTITY_COLUMNS:]
    if timestamp is None or installed:
        return None
    if served_target != (None if queued else wanted_target):
        return None
    await devices.touch_seen(runtime.database, device.id, device.last_seen_at)
    return bytes(timestamp)

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
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.deployments.director.assignment import check_in_assignment, check_in_parameters
from fleetkeeper.deployments.director.models import DirectorState
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.auth import serial_parameter
from fleetkeeper.devices.read_model import identity_and_rest, identity_with


@functools.cache
def _check_in_query() -> Select[Any]:
    assignment = check_in_assignment()
    return identity_with(
        DirectorState.target_path,
        DirectorState.timestamp,
        assignment.c.target_path,
        assignment.c.queued,
        assignment.c.installed,
        keyed_by_device=[DirectorState],
        outer_joins=[(assignment, true())],
    )


async def unchanged_timestamp(runtime: DeploymentsContext, peer: PeerCertificate) -> bytes | None:
    """The device's stored director timestamp when its check-in changes nothing, else None.

    Raises what `authenticate` raises for a certificate that is not an accepted device's."""
    parameters = {**serial_parameter(peer), **check_in_parameters(peer.common_name)}
    # Every check-in has its own certificate and device; `now` is shared by the check-ins sent together.
    row = await runtime.database.read_row(_check_in_query(), parameters, batch_by=("serial", "device_id"))
    device, (served_target, timestamp, wanted_target, queued, installed) = identity_and_rest(peer, row)
    if timestamp is None or installed:
        return None
    if served_target != (None if queued else wanted_target):
        return None
    await devices.touch_seen(runtime.database, device.id, device.last_seen_at)
    return bytes(timestamp)

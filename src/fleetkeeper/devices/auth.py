"""The FastAPI dependency that authenticates a device on the device listener. Other domains'
device routes use it too."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from sqlalchemy import ColumnElement, FromClause, Row, Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from fleetkeeper.core.errors import UnauthenticatedError
from fleetkeeper.core.peer import PeerCertificate, peer_of, require_peer_certificate
from fleetkeeper.core.routeaccess import AccessRule, mark
from fleetkeeper.devices import service
from fleetkeeper.devices.context import devices_context
from fleetkeeper.devices.models import Device, DeviceCertificate

C = TypeVar("C")


def _by_serial(*companions: Any) -> Select[Any]:
    """Device and revocation of the certificate whose serial is bound as `serial`, with the row of
    each companion table (keyed by `device_id`, outer-joined: None when the device has none)."""
    query = (
        select(Device, DeviceCertificate.revoked_at, *companions)
        .join(DeviceCertificate, DeviceCertificate.device_id == Device.id)
        .where(DeviceCertificate.serial == bindparam("serial"))
    )
    for companion in companions:
        query = query.outerjoin(companion, companion.device_id == Device.id)
    return query


# Built once: building the statement costs more CPU than PostgreSQL takes to answer it.
_DEVICE_BY_SERIAL = _by_serial()


async def authenticate(session: AsyncSession, peer: PeerCertificate) -> Device:
    """The device whose certificate this is: issued by us, not revoked, device accepted (one
    query). The TLS layer checks the CA and the CRL; this check also holds before a new CRL is
    loaded. For a route that reads more in the same session: it `touch`es the device afterwards."""
    found = (await session.execute(_DEVICE_BY_SERIAL, {"serial": _serial(peer)})).one_or_none()
    return _accepted(peer, found)


async def authenticate_with(
    session: AsyncSession, peer: PeerCertificate, companion: type[C]
) -> tuple[Device, C | None]:
    """`authenticate`, and in the same query the device's row of another domain's table keyed by
    `device_id` (None when there is none): one round trip for a check-in."""
    query = _COMPANION_QUERIES.get(companion)
    if query is None:
        query = _COMPANION_QUERIES[companion] = _by_serial(companion)
    found = (await session.execute(query, {"serial": _serial(peer)})).one_or_none()
    companion_row: C | None = list(found)[2] if found is not None else None
    return _accepted(peer, found), companion_row


_COMPANION_QUERIES: dict[type[Any], Select[Any]] = {}


@dataclass(frozen=True)
class DeviceIdentity:
    """An authenticated device as a hot route needs it: no ORM object, no inventory."""

    id: str
    device_type: str
    last_seen_at: datetime | None


def identity_query(
    *columns: Any, outer_joins: Iterable[tuple[FromClause, ColumnElement[bool]]] = ()
) -> Select[Any]:
    """The device identity of the certificate whose serial is bound as `serial` (parameters:
    `serial_parameter`) followed by `columns` from the tables of `outer_joins` (each with its ON
    clause): a route's whole read in one statement. `identity_of` checks a row of it."""
    query = (
        select(
            Device.id,
            Device.status,
            Device.device_type,
            Device.last_seen_at,
            DeviceCertificate.revoked_at,
            *columns,
        )
        .join(DeviceCertificate, DeviceCertificate.device_id == Device.id)
        .where(DeviceCertificate.serial == bindparam("serial"))
    )
    for table, onclause in outer_joins:
        query = query.outerjoin(table, onclause)
    return query


IDENTITY_COLUMNS = 5  # the leading columns of an `identity_query` row


def serial_parameter(peer: PeerCertificate) -> dict[str, str]:
    return {"serial": _serial(peer)}


def identity_of(peer: PeerCertificate, row: Sequence[Any] | None) -> DeviceIdentity:
    """The checks of `authenticate` on a row of `identity_query` (None: no such certificate)."""
    nothing: tuple[Any, ...] = (None,) * IDENTITY_COLUMNS
    device_id, status, device_type, last_seen_at, revoked_at = (
        tuple(row)[:IDENTITY_COLUMNS] if row is not None else nothing
    )
    _check(peer, device_id, status, revoked_at)
    return DeviceIdentity(device_id, device_type, last_seen_at)


def _serial(peer: PeerCertificate) -> str:
    return format(peer.serial_number, "x")


def _accepted(peer: PeerCertificate, found: Row[Any] | None) -> Device:
    device, revoked_at = (found[0], list(found)[1]) if found is not None else (None, None)
    _check(peer, device.id if device else None, device.status if device else None, revoked_at)
    assert isinstance(device, Device)
    return device


def _check(
    peer: PeerCertificate, device_id: str | None, status: str | None, revoked_at: datetime | None
) -> None:
    if device_id is None or device_id != peer.common_name:
        raise UnauthenticatedError(
            "this certificate does not belong to a known device", code="unknown_certificate"
        )
    if revoked_at is not None:
        raise UnauthenticatedError("this certificate was revoked", code="certificate_revoked")
    if status != "accepted":
        raise UnauthenticatedError(f"this device is {status}", code="device_not_accepted")


async def _authenticated_device(connection: HTTPConnection) -> Device:
    peer = peer_of(connection)
    runtime = devices_context(connection)
    async with runtime.database.read() as session:
        device = await authenticate(session, peer)
    await service.touch(runtime.database, device)
    return device


AuthenticatedDevice = Annotated[Device, Depends(mark(AccessRule("device"), _authenticated_device))]
# For routes that call `authenticate` themselves, in a session that reads more: the TLS peer,
# declared as a device route.
DevicePeer = Annotated[PeerCertificate, Depends(require_peer_certificate)]

"""The infrastructure every app of a server process holds: what core's own routes use.

Each domain declares the services it needs as its own small protocol (`access/context.py`,
`releases/context.py`, ...); the server's `Runtime` (server/runtime.py) satisfies them all, and
server/contexts.py has mypy check that it does. Both apps keep it in `app.state.runtime`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from fleetkeeper.core.config import Settings
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.objectstore import ObjectStore
    from fleetkeeper.core.pki import CertificateAuthority, PkiPaths
    from fleetkeeper.core.ratelimit import RateLimiter
    from fleetkeeper.core.tls import DeviceListenerTls


class Infrastructure(Protocol):
    settings: Settings
    database: Database
    pki: PkiPaths
    ca: CertificateAuthority
    device_tls: DeviceListenerTls
    rate_limiter: RateLimiter
    object_store: ObjectStore


def infrastructure(connection: HTTPConnection) -> Infrastructure:
    services: Infrastructure = connection.app.state.runtime
    return services

"""What the devices domain needs of the server process: the fleet CA and its files, the device
listener's TLS (its CRL), the enrollment rate limiter. The server's Runtime provides it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from fleetkeeper.core.config import Settings
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.pki import CertificateAuthority, PkiPaths
    from fleetkeeper.core.ratelimit import RateLimiter
    from fleetkeeper.core.tls import DeviceListenerTls


class DevicesContext(Protocol):
    settings: Settings
    database: Database
    pki: PkiPaths
    ca: CertificateAuthority
    device_tls: DeviceListenerTls
    rate_limiter: RateLimiter
    # False in a device worker: the main process publishes the CRL file.
    primary: bool


def devices_context(connection: HTTPConnection) -> DevicesContext:
    """The services of the app behind this request or WebSocket, as devices uses them."""
    context: DevicesContext = connection.app.state.runtime
    return context

"""What the access domain needs of the server process: its database, settings, the token
key ring, the sign-in rate limiter and the OpenID client. The server's Runtime provides it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from fleetkeeper.access.oidc import OidcClient
    from fleetkeeper.access.tokens import KeyRing
    from fleetkeeper.core.config import Settings
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.ratelimit import RateLimiter


class AccessContext(Protocol):
    settings: Settings
    database: Database
    keyring: KeyRing
    rate_limiter: RateLimiter
    oidc: OidcClient


def access_context(connection: HTTPConnection) -> AccessContext:
    """The services of the app behind this request or WebSocket, as access uses them."""
    context: AccessContext = connection.app.state.runtime
    return context

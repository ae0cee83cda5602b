"""What the audit domain needs of the server process. The server's Runtime provides it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from fleetkeeper.core.config import Settings
    from fleetkeeper.core.db import Database


class AuditContext(Protocol):
    settings: Settings
    database: Database


def audit_context(connection: HTTPConnection) -> AuditContext:
    """The services of the app behind this request or WebSocket, as audit uses them."""
    context: AuditContext = connection.app.state.runtime
    return context

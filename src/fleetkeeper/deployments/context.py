"""What the deployments domain needs of the server process. The server's Runtime provides it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

from fleetkeeper.releases.context import ReleasesContext

if TYPE_CHECKING:
    from fleetkeeper.core.config import Settings
    from fleetkeeper.core.db import Database


class DeploymentsContext(ReleasesContext, Protocol):
    """The director signs with the online keys and answers with the releases' metadata."""

    settings: Settings
    database: Database


def deployments_context(connection: HTTPConnection) -> DeploymentsContext:
    """The services of the app behind this request or WebSocket, as deployments uses them."""
    context: DeploymentsContext = connection.app.state.runtime
    return context

"""What the releases domain needs of the server process: the object store of release files and
the online TUF keys. The server's Runtime provides it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from fleetkeeper.core.config import Settings
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.objectstore import ObjectStore
    from fleetkeeper.releases.online_keys import OnlineKeys


class ReleasesContext(Protocol):
    settings: Settings
    database: Database
    object_store: ObjectStore
    online_keys: OnlineKeys


def releases_context(connection: HTTPConnection) -> ReleasesContext:
    """The services of the app behind this request or WebSocket, as releases uses them."""
    context: ReleasesContext = connection.app.state.runtime
    return context

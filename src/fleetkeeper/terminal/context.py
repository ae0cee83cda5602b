"""What the terminal domain needs of the server process: the relay between an operator's and a
device's connections, and the object store that keeps recordings. The server's Runtime provides it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from fleetkeeper.core.config import Settings
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.objectstore import ObjectStore
    from fleetkeeper.terminal.relay import Relay


class TerminalContext(Protocol):
    settings: Settings
    database: Database
    object_store: ObjectStore
    terminal_relay: Relay


def terminal_context(connection: HTTPConnection) -> TerminalContext:
    """The services of the app behind this request or WebSocket, as terminal uses them."""
    context: TerminalContext = connection.app.state.runtime
    return context

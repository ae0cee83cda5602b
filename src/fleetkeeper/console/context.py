"""What the console needs of the server process: what the domains whose pages it shows need. The
server's Runtime provides it."""

from __future__ import annotations

from typing import Protocol

from starlette.requests import HTTPConnection

from fleetkeeper.access.context import AccessContext
from fleetkeeper.audit.context import AuditContext
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.terminal.context import TerminalContext


class ConsoleContext(
    AccessContext,
    AuditContext,
    DevicesContext,
    DeploymentsContext,
    TerminalContext,
    Protocol,
):
    pass


def console_context(connection: HTTPConnection) -> ConsoleContext:
    """The services of the app behind this request or WebSocket, as the console uses them."""
    context: ConsoleContext = connection.app.state.runtime
    return context

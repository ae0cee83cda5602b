"""The Runtime gives every domain what its context protocol declares: mypy checks these
assignments, so a service a domain starts to need fails type checking here until the Runtime holds
it. Never called."""

from __future__ import annotations

from fleetkeeper.access.context import AccessContext
from fleetkeeper.audit.context import AuditContext
from fleetkeeper.console.context import ConsoleContext
from fleetkeeper.core.context import Infrastructure
from fleetkeeper.deployments.context import DeploymentsContext
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.releases.context import ReleasesContext
from fleetkeeper.server.runtime import Runtime
from fleetkeeper.terminal.context import TerminalContext


def _runtime_provides_every_context(runtime: Runtime) -> None:
    infrastructure: Infrastructure = runtime
    access: AccessContext = runtime
    audit: AuditContext = runtime
    devices: DevicesContext = runtime
    releases: ReleasesContext = runtime
    deployments: DeploymentsContext = runtime
    terminal: TerminalContext = runtime
    console: ConsoleContext = runtime
    del infrastructure, access, audit, devices, releases, deployments, terminal, console

"""Update modules: how a verified payload is installed, activated, committed or rolled back.

Built in: file, directory, script, rootfs-ab, container, package. A release whose module is
`x-<name>` is installed by a module another distribution provides through the entry point group
`fleetkeeper_agent.modules`, under the entry point name `x-<name>` (docs/update-modules.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules.base import InstallContext, UpdateModule
from fleetkeeper_agent.modules.container import ContainerModule
from fleetkeeper_agent.modules.directory import DirectoryModule
from fleetkeeper_agent.modules.file import FileModule
from fleetkeeper_agent.modules.package import PackageModule
from fleetkeeper_agent.modules.rootfs_ab import RootfsABModule
from fleetkeeper_agent.modules.script import ScriptModule

ENTRY_POINT_GROUP = "fleetkeeper_agent.modules"
BUILTIN_MODULES: dict[str, type[UpdateModule]] = {
    module.name: module
    for module in (FileModule, DirectoryModule, ScriptModule, RootfsABModule, ContainerModule, PackageModule)
}

__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "InstallContext", "UpdateModule", "load_module"]


def load_module(name: str, settings: Mapping[str, Any]) -> UpdateModule:
    """The module `name` (a release's `module` field), configured with its settings table. Whatever
    goes wrong is an AgentError: `unknown_module`, `module_unavailable`, or the module's own
    (`invalid_settings`)."""
    if name in BUILTIN_MODULES:
        return _made(BUILTIN_MODULES[name], settings)
    if name.startswith("x-"):
        for entry_point in entry_points(group=ENTRY_POINT_GROUP, name=name):
            try:
                module_class = entry_point.load()
            except Exception as exc:  # a third party's import error, whatever it is
                raise AgentError(
                    "module_unavailable", f"the entry point {name} does not load: {type(exc).__name__}: {exc}"
                ) from exc
            if not (isinstance(module_class, type) and issubclass(module_class, UpdateModule)):
                raise AgentError("module_unavailable", f"the entry point {name} is not an UpdateModule class")
            return _made(module_class, settings)
    raise AgentError("unknown_module", f"no update module {name!r} is installed on this device")


def _made(module_class: type[UpdateModule], settings: Mapping[str, Any]) -> UpdateModule:
    try:
        return module_class(settings)
    except AgentError:
        raise
    except Exception as exc:  # a settings check written as a bare lookup, or a bug
        raise AgentError(
            "module_unavailable", f"{module_class.__name__}(settings) raised {type(exc).__name__}: {exc}"
        ) from exc

"""The simulator is a client, like the agent: it installs without the server (`fleetkeeper[sim]`) and
must never import `fleetkeeper`; beyond the agent's dependencies it needs only typer and rich."""

from __future__ import annotations

import sys
from pathlib import Path

import fleetkeeper_sim
from tests.agent.test_imports import ALLOWED, imported_modules

PACKAGE = Path(fleetkeeper_sim.__file__).parent


def test_no_module_imports_the_server_or_a_foreign_dependency() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 6
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top != "fleetkeeper", f"{path.name} imports {module}"
            allowed = ALLOWED | {"fleetkeeper_sim", "typer", "rich"}
            assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {module}"

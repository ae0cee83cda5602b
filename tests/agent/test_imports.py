"""The agent installs on a device without the server: it must never import `fleetkeeper`, and needs
nothing beyond the stdlib, cryptography, httpx2, websockets and tuf (python-tuf)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fleetkeeper_agent

PACKAGE = Path(fleetkeeper_agent.__file__).parent
ALLOWED = {"fleetkeeper_agent", "cryptography", "httpx2", "websockets", "tuf"}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_no_module_imports_the_server_or_a_foreign_dependency() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top != "fleetkeeper", f"{path.name} imports {module}"
            assert top in ALLOWED or top in sys.stdlib_module_names, f"{path.name} imports {module}"


BLOCKER = """
import importlib, pkgutil, sys

class NoServer:
    def find_spec(self, name, path=None, target=None):
        if name == "fleetkeeper" or name.startswith("fleetkeeper."):
            raise ImportError(f"the agent imported {name}")
        return None

sys.meta_path.insert(0, NoServer())
import fleetkeeper_agent
for module in pkgutil.walk_packages(fleetkeeper_agent.__path__, "fleetkeeper_agent."):
    importlib.import_module(module.name)
from fleetkeeper_agent.cli import main
assert main(["version"]) == 0
loaded = sorted(name for name in sys.modules if name == "fleetkeeper" or name.startswith("fleetkeeper."))
assert not loaded, loaded
"""


def test_every_module_imports_and_runs_with_the_server_package_blocked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fleetkeeper_agent.__version__

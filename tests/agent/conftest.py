"""A user's own update module, installed as pip would install it, for the tests that load modules
through the entry point group."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetkeeper_agent.modules import ENTRY_POINT_GROUP

PLUGIN = """
from fleetkeeper_agent.modules import InstallContext, UpdateModule


class FirmwareModule(UpdateModule):
    name = "x-firmware"

    def install(self, ctx: InstallContext) -> bool:
        (ctx.work_dir / "flashed").parent.mkdir(parents=True, exist_ok=True)
        (ctx.work_dir / "flashed").write_bytes(ctx.payload.read_bytes())
        return bool(self.settings.get("reboot", False))

    def commit(self, ctx: InstallContext) -> None:
        pass

    def rollback(self, ctx: InstallContext) -> bool:
        return False


class NotAModule:
    pass


class FussyModule(FirmwareModule):
    # Reads its settings carelessly: a missing one is a KeyError, not an AgentError.
    name = "x-fussy"

    def __init__(self, settings):
        super().__init__(settings)
        self.port = settings["serial_port"]
"""


@pytest.fixture
def plugin_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution, as pip would leave it: a module and a .dist-info with entry points."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fk_firmware_plugin.py").write_text(PLUGIN)
    info = site / "fk_firmware_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fk-firmware-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
            [{ENTRY_POINT_GROUP}]
            x-firmware = fk_firmware_plugin:FirmwareModule
            x-broken = fk_firmware_plugin:NotAModule
            x-missing = fk_firmware_plugin_gone:Module
            x-fussy = fk_firmware_plugin:FussyModule
            """)
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    sys.modules.pop("fk_firmware_plugin", None)

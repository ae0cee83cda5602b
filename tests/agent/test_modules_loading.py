"""load_module: built-ins by name, a user's own module `x-<name>` through the entry point group."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext, load_module
from fleetkeeper_agent.modules.file import FileModule


def test_a_builtin_module_gets_its_settings() -> None:
    module = load_module("file", {"directory": "/etc/app"})
    assert isinstance(module, FileModule)
    assert module.directory == Path("/etc/app")


def test_a_custom_module_comes_from_its_entry_point(tmp_path: Path, plugin_distribution: Path) -> None:
    module = load_module("x-firmware", {"reboot": True})
    assert module.name == "x-firmware"
    payload = tmp_path / "fw.bin"
    payload.write_bytes(b"\x7fFW")
    ctx = InstallContext(release={"name": "fw"}, payload=payload, work_dir=tmp_path / "work", settings={})
    assert module.install(ctx) is True
    assert module.activated(ctx) is True  # the default
    assert (tmp_path / "work/flashed").read_bytes() == b"\x7fFW"


@pytest.mark.parametrize(
    ("name", "code"),
    [("x-broken", "module_unavailable"), ("x-missing", "module_unavailable"), ("x-other", "unknown_module")],
)
def test_a_custom_module_that_cannot_be_used_has_a_code(
    plugin_distribution: Path, name: str, code: str
) -> None:
    with pytest.raises(AgentError) as caught:
        load_module(name, {})
    assert caught.value.code == code


def test_a_module_whose_constructor_raises_anything_is_unavailable(plugin_distribution: Path) -> None:
    """A third party's module may check its settings with a bare lookup: that is a module that cannot be
    used with this configuration, said with the code every caller handles, not an exception of any type."""
    with pytest.raises(AgentError) as caught:
        load_module("x-fussy", {})
    assert caught.value.code == "module_unavailable"
    assert caught.value.message == "FussyModule(settings) raised KeyError: 'serial_port'"
    assert load_module("x-fussy", {"serial_port": "/dev/ttyS1"}).name == "x-fussy"

"""An install that fails in a way no module meant (a bug, an archive that broke the unpacker) is
reported as a failure, rolled back, and leaves the agent free for the next check-in: an update never
wedges the device in the middle of an install."""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any, cast

import pytest

from fleetkeeper_agent.modules import InstallContext
from fleetkeeper_agent.modules.file import FileModule
from fleetkeeper_agent.update_state import UpdateState
from fleetkeeper_agent.updates import UpdateFlow
from fleetkeeper_agent.uptane import VerifiedUpdate
from tests.agent.installkit import DeploymentsServer, announced_install, file_install
from tests.agent.modulekit import Member, build_tar, deep_tree


@pytest.mark.parametrize(
    "error", [RuntimeError("a bug in the module"), RecursionError("maximum recursion depth exceeded")]
)
def test_an_unexpected_error_in_install_is_reported_and_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    flow, server = file_install(tmp_path)
    real_install = FileModule.install

    def install_then_fail(self: FileModule, ctx: InstallContext) -> bool:
        real_install(self, ctx)  # the new file is in place when the module breaks
        raise error

    monkeypatch.setattr(FileModule, "install", install_then_fail)
    state = flow.tick()

    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert state.phase == "idle"
    assert state.outbox == ()
    assert state.installed.version is None  # 2.0 never became the installed release
    assert [report["status"] for report in server.reports] == ["failure"]
    detail = server.reports[0]["detail"]
    assert detail.startswith("install failed: ")
    assert type(error).__name__ in detail
    assert str(error) in detail
    assert list((flow.data_dir / "work").iterdir()) == []  # the install's journal and backup are gone

    # The next check-in finds nothing under way and nothing to do: no crash, no second report.
    assert flow.tick().phase == "idle"
    assert len(server.reports) == 1


def test_an_unexpected_error_in_the_activation_check_after_the_reboot_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, server = file_install(tmp_path)
    real_install = FileModule.install

    def install_for_a_reboot(self: FileModule, ctx: InstallContext) -> bool:
        real_install(self, ctx)
        return True

    def broken_activated(self: FileModule, ctx: InstallContext) -> bool:
        raise KeyError("slot")

    monkeypatch.setattr(FileModule, "install", install_for_a_reboot)
    monkeypatch.setattr(FileModule, "activated", broken_activated)
    assert flow.tick().phase == "rebooting"
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 2.0\n"

    state = flow.tick()  # after the reboot
    assert state.phase == "idle"
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert [report["status"] for report in server.reports] == ["rebooting", "failure"]
    assert "activation check raised KeyError" in server.reports[1]["detail"]
    assert flow.tick().phase == "idle"


def test_a_tree_too_deep_for_the_unpacker_fails_the_install_which_is_rolled_back(tmp_path: Path) -> None:
    """Issue 18: such a tree raised RecursionError through the `directory` module, so every check-in
    tried the install again and crashed, and the device never rolled back nor reported."""
    (tmp_path / "opt" / "app.1.0").mkdir(parents=True)
    (tmp_path / "opt" / "app").symlink_to("app.1.0")
    archive = build_tar(
        tmp_path / "payload.tar",
        [Member("a/" * depth, type=tarfile.DIRTYPE, mode=0o755) for depth in range(1, 1201)],
    )
    settings = {"path": str(tmp_path / "opt" / "app")}
    flow, server = announced_install(tmp_path, "directory", settings, "payload.tar", archive.read_bytes())

    state = flow.tick()
    assert state.phase == "idle"
    assert os.readlink(tmp_path / "opt" / "app") == "app.1.0"
    assert sorted(os.listdir(tmp_path / "opt")) == ["app", "app.1.0"]
    assert [report["status"] for report in server.reports] == ["failure"]
    assert server.reports[0]["detail"].startswith("install failed: ")
    assert flow.tick().phase == "idle"


def test_a_work_directory_deeper_than_the_recursion_limit_is_removed_after_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: the clean-up after a commit or a rollback removed the work directory with
    shutil.rmtree, which recurses once per level: a module that left a deep tree there raised
    RecursionError out of every check-in. The tree goes, and a link in it is not followed."""
    flow, server = file_install(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the agent's\n")
    real_install = FileModule.install
    with contextlib.ExitStack() as trees:

        def install_leaving_a_deep_tree(self: FileModule, ctx: InstallContext) -> bool:
            trees.enter_context(deep_tree(ctx.work_dir / "scratch", 1500, outside))
            return real_install(self, ctx)

        monkeypatch.setattr(FileModule, "install", install_leaving_a_deep_tree)
        state = flow.tick()
        assert (state.phase, state.installed.version) == ("idle", "2.0")
        assert [report["status"] for report in server.reports] == ["success"]
        assert list((flow.data_dir / "work").iterdir()) == []
    assert outside.read_text() == "not the agent's\n"


class Listing:
    """The director listing the release the device's state names, as verified."""

    def __init__(self, state: UpdateState) -> None:
        assert state.target_path is not None
        self.update = VerifiedUpdate(
            state.target_path, state.length, state.hashes, state.release, state.release_counter
        )

    def check(self, highest_installed_counter: int) -> VerifiedUpdate:
        return self.update


def test_an_install_starts_without_the_journal_an_earlier_install_of_the_same_payload_left(
    tmp_path: Path,
) -> None:
    """An earlier install of 2.0, when there was no app.conf yet, was killed between its last state
    write and its clean-up: its journal ("nothing there before") stayed in the work directory. Read by
    this install, its rollback would delete app.conf 1.0 instead of restoring it."""
    flow, server = file_install(tmp_path)
    state = UpdateState.load(flow.data_dir).moved("downloaded")
    state.save(flow.data_dir)
    stale = flow.data_dir / "work" / state.hashes["sha256"][:16]
    stale.mkdir(parents=True)
    journal = {"target": str(tmp_path / "etc" / "app.conf"), "had_previous": False}
    (stale / "file.json").write_text(json.dumps(journal))
    flow.checker = cast(Any, Listing(state))
    flow.config.health_commands.append(["false"])  # 2.0 fails its health check: rolled back

    assert flow.tick().phase == "idle"
    assert [report["status"] for report in server.reports] == ["installing", "failure"]
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"


# --- a module that cannot be loaded ----------------------------------------------------------------


def app_conf_install(
    tmp_path: Path, module: str, settings: dict[str, Any]
) -> tuple[UpdateFlow, DeploymentsServer, Path]:
    """file_install's release, for a module (and settings) of the test's choosing."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "app.conf").write_bytes(b"release 1.0\n")
    flow, server = announced_install(tmp_path, module, settings, "app.conf", b"release 2.0\n")
    return flow, server, etc / "app.conf"


def assert_nothing_left(flow: UpdateFlow) -> None:
    """Neither the payload nor a work directory of the install stays behind."""
    for kept in ("downloads", "work"):
        directory = flow.data_dir / kept
        assert not directory.exists() or list(directory.iterdir()) == [], kept


@pytest.mark.parametrize(
    ("module", "settings", "reason"),
    [
        ("file", {}, "[modules.file] directory: expected a non-empty string"),
        ("file", {"directory": "etc"}, "[modules.file] directory: expected an absolute path"),
        ("x-gone", {}, "no update module 'x-gone' is installed on this device"),
    ],
)
def test_a_module_that_cannot_be_loaded_fails_the_install_with_nothing_installed(
    tmp_path: Path, module: str, settings: dict[str, Any], reason: str
) -> None:
    flow, server, installed = app_conf_install(tmp_path, module, settings)

    state = flow.tick()
    assert state.phase == "idle"
    assert state.outbox == ()
    assert installed.read_bytes() == b"release 1.0\n"
    assert state.installed.version is None
    assert [report["status"] for report in server.reports] == ["failure"]
    assert server.reports[0]["detail"] == (
        f"the {module} module could not be loaded: {reason}; "
        f"check [modules.{module}] in the agent configuration"
    )
    assert_nothing_left(flow)

    assert flow.tick().phase == "idle"
    assert len(server.reports) == 1


@pytest.mark.usefixtures("plugin_distribution")
@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("x-missing", "the entry point x-missing does not load: ModuleNotFoundError: "),
        ("x-broken", "the entry point x-broken is not an UpdateModule class"),
        ("x-fussy", "FussyModule(settings) raised KeyError: 'serial_port'"),
    ],
)
def test_a_custom_module_that_does_not_load_fails_the_install_with_nothing_installed(
    tmp_path: Path, module: str, reason: str
) -> None:
    flow, server, installed = app_conf_install(tmp_path, module, {})

    assert flow.tick().phase == "idle"
    assert installed.read_bytes() == b"release 1.0\n"
    assert [report["status"] for report in server.reports] == ["failure"]
    detail = server.reports[0]["detail"]
    assert detail.startswith(f"the {module} module could not be loaded: {reason}")
    assert detail.endswith(f"; check [modules.{module}] in the agent configuration")
    assert_nothing_left(flow)


def test_a_module_that_no_longer_loads_after_the_reboot_is_rolled_back_once_it_loads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configuration broke while the device rebooted (a new image brought another agent.toml):
    the activation check cannot run, so the install is rolled back, which is retried at the next
    check-ins; once the configuration is fixed, the rollback goes through."""
    flow, server = file_install(tmp_path)
    real_install = FileModule.install

    def install_for_a_reboot(self: FileModule, ctx: InstallContext) -> bool:
        real_install(self, ctx)
        return True

    monkeypatch.setattr(FileModule, "install", install_for_a_reboot)
    assert flow.tick().phase == "rebooting"
    settings = flow.config.modules["file"]
    flow.config.modules["file"] = {}

    state = flow.tick()  # after the reboot
    assert state.phase == "rolling_back"
    assert [report["status"] for report in server.reports] == ["rebooting", "failure"]
    detail = server.reports[1]["detail"]
    assert detail.startswith("install failed: the activation check could not run: the file module could not")
    assert "rollback failed: invalid_settings: the file module could not be loaded" in detail

    flow.config.modules["file"] = settings
    state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is None
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert len(server.reports) == 2  # the failure was reported once

"""A commit or a reboot that fails never holds the agent: it is reported once, tried again at a bounded
number of check-ins, and then the install is rolled back; a rollback whose reboot fails is tried again
and given up as any rollback that fails. Killed at any step of that, the agent ends the same way."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext, directory
from fleetkeeper_agent.modules.bootloader import SimulatedBootloader
from fleetkeeper_agent.modules.file import FileModule
from fleetkeeper_agent.offline import commit_offline, rollback_offline
from fleetkeeper_agent.update_failures import (
    MAX_COMMIT_ATTEMPTS,
    MAX_REBOOT_ATTEMPTS,
    MAX_ROLLBACK_ATTEMPTS,
)
from fleetkeeper_agent.update_state import UpdateState
from fleetkeeper_agent.updates import UpdateFlow
from tests.agent.installkit import (
    NEEDS_ATTENTION,
    NEW_IMAGE,
    OLD_IMAGE,
    Broken,
    DeploymentsServer,
    Killed,
    ab_device,
    announced_install,
    distinct_reports,
    file_install,
    killed_at_save,
    needing_a_reboot,
    rebooted_by,
    status,
    statuses,
)
from tests.agent.modulekit import Member, build_tar

COMMIT_RETRIED = (
    "; the new release runs but is not permanent yet: the commit is tried again at the next check-ins, "
    f"and the release rolled back after {MAX_COMMIT_ATTEMPTS} attempts"
)
REBOOT_RETRIED = (
    f"; the reboot is asked again at the next check-ins, and the install rolled back after "
    f"{MAX_REBOOT_ATTEMPTS} attempts"
)
REBOOT_COMMAND_FAILS = ["false"]  # its tail: "false: exit status 1"


def rolled_back_with_a_reboot(monkeypatch: pytest.MonkeyPatch) -> Broken:
    """The file module's rollback restores the file and asks for a reboot; returns its call counter."""
    real_rollback = FileModule.rollback
    calls = Broken(RuntimeError("unused"))

    def rollback_then_reboot(self: FileModule, ctx: InstallContext) -> bool:
        calls.calls += 1
        real_rollback(self, ctx)
        return True

    monkeypatch.setattr(FileModule, "rollback", rollback_then_reboot)
    return calls


# --- commit ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (
            RuntimeError("a bug in the module"),
            "the file module's commit raised RuntimeError: a bug in the module (unexpected; the "
            "traceback is in the agent's log)",
        ),
        (
            AgentError("commit_failed", "cannot write the boot environment"),
            "cannot write the boot environment",
        ),
    ],
)
def test_a_commit_that_fails_is_reported_once_retried_then_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, named: str
) -> None:
    flow, server = file_install(tmp_path)
    commit = Broken(error)
    monkeypatch.setattr(FileModule, "commit", commit)

    state = flow.tick()
    assert state.phase == "committing"  # tried again at the next check-in
    assert commit.calls == 1
    assert UpdateState.load(flow.data_dir).commit_attempts == 1  # on disk, for the next worker
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 2.0\n"  # what runs meanwhile
    # Not a failure: the server would count the device as done (or retry it) while it still runs 2.0.
    assert statuses(server) == ["installing"]
    assert server.reports[0]["detail"] == f"commit failed: {named}{COMMIT_RETRIED}"

    for attempt in range(2, MAX_COMMIT_ATTEMPTS):
        assert flow.tick().phase == "committing"
        assert commit.calls == attempt
    state = flow.tick()
    assert commit.calls == MAX_COMMIT_ATTEMPTS
    assert state.phase == "idle"
    assert state.outbox == ()
    assert state.installed.version is None  # 2.0 was never committed
    assert state.failed_rollback is None
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert statuses(server) == ["installing", "failure"]  # the outcome, once
    assert server.reports[1]["detail"] == f"commit failed ({MAX_COMMIT_ATTEMPTS} attempts): {named}"
    assert list((flow.data_dir / "work").iterdir()) == []
    assert list((flow.data_dir / "downloads").iterdir()) == []

    assert flow.tick().phase == "idle"
    assert commit.calls == MAX_COMMIT_ATTEMPTS
    assert len(server.reports) == 2


def test_a_commit_that_works_when_tried_again_reports_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow, server = file_install(tmp_path)
    calls = []

    def fails_once(self: FileModule, ctx: InstallContext) -> None:
        calls.append(ctx.work_dir)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileModule, "commit", fails_once)
    assert flow.tick().phase == "committing"
    shown = status(flow.data_dir, capsys)
    assert (shown["phase"], shown["commit_attempts"]) == ("committing", 1)
    assert shown["commit_error"].startswith("the file module's commit raised OSError: [Errno 28] No space")

    state = flow.tick()
    assert state.phase == "idle"
    assert (state.installed.version, state.commit_attempts, state.commit_error) == ("2.0", 0, None)
    assert statuses(server) == ["installing", "success"]
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 2.0\n"
    assert list((flow.data_dir / "work").iterdir()) == []


def test_a_module_that_no_longer_loads_at_commit_is_retried_like_a_failing_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, server = file_install(tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(FileModule, "commit", Broken(OSError(5, "Input/output error")))
        assert flow.tick().phase == "committing"
    settings = flow.config.modules["file"]
    flow.config.modules["file"] = {}

    assert flow.tick().phase == "committing"
    error = UpdateState.load(flow.data_dir).commit_error
    assert error is not None
    assert error.startswith("the file module could not be loaded: [modules.file] directory: expected")
    assert statuses(server) == ["installing"]  # reported once, at the first failure

    flow.config.modules["file"] = settings
    assert flow.tick().installed.version == "2.0"
    assert statuses(server) == ["installing", "success"]


def test_an_ab_commit_that_cannot_write_the_boot_environment_leaves_the_trial_to_the_bootloader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rootfs-ab: slot b booted and is healthy, but the boot environment cannot be written, neither to
    make b permanent nor to point the bootloader back at a. The commit is given up and rolled back,
    the rollback given up in turn: b stays on trial, and the bootloader goes back to a by itself."""
    bootloader, settings = ab_device(tmp_path)
    flow, server = announced_install(
        tmp_path, "rootfs-ab", settings, "rootfs.img", NEW_IMAGE, on_reboot=bootloader.simulate_boot
    )
    assert flow.tick().phase == "rebooting"
    assert bootloader.read()["boot_slot"] == "b"

    def unwritable(self: SimulatedBootloader, values: object) -> None:
        raise AgentError("bootloader_error", "fw_setenv: cannot write the environment")

    with monkeypatch.context() as patched:
        patched.setattr(SimulatedBootloader, "write", unwritable)
        state = flow.tick()  # rebooted into b, healthy, and the commit fails
        assert state.phase == "committing"
        assert statuses(server) == ["rebooting", "rebooting"]
        assert server.reports[1]["detail"] == (
            f"commit failed: fw_setenv: cannot write the environment{COMMIT_RETRIED}"
        )
        for _ in range(MAX_COMMIT_ATTEMPTS - 1 + MAX_ROLLBACK_ATTEMPTS):
            state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is not None
    assert statuses(server) == ["rebooting", "rebooting", "failure"]
    assert server.reports[2]["detail"] == (
        f"commit failed ({MAX_COMMIT_ATTEMPTS} attempts): fw_setenv: cannot write the environment; "
        f"rollback failed: rollback_failed: fw_setenv: cannot write the environment{NEEDS_ATTENTION}"
    )
    env = bootloader.read()
    assert (env["boot_slot"], env["upgrade_available"]) == ("b", "1")
    assert [bootloader.simulate_boot() for _ in range(3)] == ["b", "b", "a"]  # bootlimit 3
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE


def test_a_directory_commit_that_removed_part_of_the_previous_tree_is_not_rolled_back_onto_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`directory`: the commit removes the previous tree, and fails halfway. Rolled back, the link would
    point at what is left of it; so the rollback refuses, is given up, and the new tree stays."""
    opt = tmp_path / "opt"
    (opt / "app.1.0").mkdir(parents=True)
    for name in ("a", "b"):
        (opt / "app.1.0" / name).write_text("1.0\n")
    (opt / "app").symlink_to("app.1.0")
    archive = build_tar(tmp_path / "payload.tar", [Member("a", b"2.0\n"), Member("b", b"2.0\n")])
    settings = {"path": str(opt / "app")}
    flow, server = announced_install(tmp_path, "directory", settings, "payload.tar", archive.read_bytes())
    real_remove_tree = directory.remove_tree

    def removes_part_then_fails(path: Path) -> None:
        if path.name != "app.1.0":
            return real_remove_tree(path)
        (path / "a").unlink(missing_ok=True)
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(directory, "remove_tree", removes_part_then_fails)
    for _ in range(MAX_COMMIT_ATTEMPTS + MAX_ROLLBACK_ATTEMPTS - 1):
        state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is not None
    assert os.readlink(opt / "app") == "app.2.0"
    assert (opt / "app" / "a").read_text() == "2.0\n"
    assert statuses(server) == ["installing", "failure"]
    assert server.reports[1]["detail"] == (
        f"commit failed ({MAX_COMMIT_ATTEMPTS} attempts): cannot remove the previous tree app.1.0: "
        "[Errno 16] Device or resource busy; rollback failed: rollback_failed: the commit began removing "
        f"the previous tree app.1.0: {opt / 'app'} stays linked to the new tree app.2.0{NEEDS_ATTENTION}"
    )


# --- an offline install, committed by the operator -------------------------------------------------


def offline_install(tmp_path: Path) -> UpdateFlow:
    """file_install's release installed from a bundle: it waits for the operator's `commit`."""
    flow, _ = file_install(tmp_path)
    state = UpdateState.load(flow.data_dir)
    state.moved(state.phase, deployment_id=None).save(flow.data_dir)
    assert flow.advance(UpdateState.load(flow.data_dir)).phase == "awaiting_commit"
    return flow


def test_an_offline_commit_that_fails_says_so_and_can_be_run_again_or_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = offline_install(tmp_path)
    monkeypatch.setattr(FileModule, "commit", Broken(OSError(5, "Input/output error")))

    with pytest.raises(AgentError) as caught:
        commit_offline(flow.config)
    assert caught.value.code == "commit_failed"
    assert "OSError: [Errno 5] Input/output error" in caught.value.message
    assert f"attempt 1 of {MAX_COMMIT_ATTEMPTS}" in caught.value.message
    assert UpdateState.load(flow.data_dir).phase == "committing"

    with pytest.raises(AgentError) as caught:
        commit_offline(flow.config)
    assert f"attempt 2 of {MAX_COMMIT_ATTEMPTS}" in caught.value.message

    state = rollback_offline(flow.config)  # the operator gives up on it
    assert (state.phase, state.installed.version) == ("idle", None)
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"


def test_an_offline_commit_that_keeps_failing_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = offline_install(tmp_path)
    commit = Broken(AgentError("commit_failed", "the script's commit phase failed"))
    monkeypatch.setattr(FileModule, "commit", commit)

    for _ in range(MAX_COMMIT_ATTEMPTS - 1):
        with pytest.raises(AgentError):
            commit_offline(flow.config)
    with pytest.raises(AgentError) as caught:
        commit_offline(flow.config)
    assert caught.value.code == "commit_failed"
    assert caught.value.message == (
        f"commit failed ({MAX_COMMIT_ATTEMPTS} attempts): the script's commit phase failed; rolled back"
    )
    assert commit.calls == MAX_COMMIT_ATTEMPTS
    assert UpdateState.load(flow.data_dir).phase == "idle"
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"


# --- reboot ------------------------------------------------------------------------------------------


def test_an_ab_install_whose_reboot_fails_is_reported_once_retried_then_rolled_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rootfs-ab wrote slot b and pointed the bootloader at it, and the reboot command fails: the
    old slot still runs; after the last attempt the rollback points the bootloader back at it."""
    bootloader, settings = ab_device(tmp_path)
    announced, server = announced_install(tmp_path, "rootfs-ab", settings, "rootfs.img", NEW_IMAGE)
    flow = rebooted_by(announced, REBOOT_COMMAND_FAILS)

    state = flow.tick()
    assert state.phase == "rebooting"
    assert bootloader.read()["boot_slot"] == "b"
    assert statuses(server) == ["rebooting", "rebooting"]
    assert server.reports[1]["detail"] == f"the reboot failed: false: exit status 1{REBOOT_RETRIED}"
    shown = status(flow.data_dir, capsys)
    assert (shown["phase"], shown["reboot_attempts"], shown["reboot_error"]) == (
        "rebooting",
        1,
        "false: exit status 1",
    )

    for _ in range(2, MAX_REBOOT_ATTEMPTS):
        assert flow.tick().phase == "rebooting"
    assert len(server.reports) == 2  # reported once
    state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is None
    assert statuses(server) == ["rebooting", "rebooting", "failure"]
    assert server.reports[2]["detail"] == (
        f"install failed: the reboot failed ({MAX_REBOOT_ATTEMPTS} attempts): false: exit status 1"
    )
    env = bootloader.read()
    assert (env["boot_slot"], env["upgrade_available"]) == ("a", "0")
    assert bootloader.simulate_boot() == "a"
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE
    assert flow.tick().phase == "idle"
    assert len(server.reports) == 3


def test_a_reboot_that_works_when_asked_again_goes_on_to_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, server = file_install(tmp_path)
    needing_a_reboot(monkeypatch)
    boot_id = flow.config.boot_id_file
    asked = []

    def reboot() -> None:
        asked.append(True)
        if len(asked) == 1:
            raise RuntimeError("logind is not answering")
        boot_id.write_text("boot-2\n")

    flow = UpdateFlow(flow.config, flow.client, flow.checker, reboot=reboot)
    assert flow.tick().phase == "rebooting"
    assert server.reports[1]["detail"] == (
        "the reboot failed: the reboot raised RuntimeError: logind is not answering (unexpected; the "
        f"traceback is in the agent's log){REBOOT_RETRIED}"
    )
    assert flow.tick().phase == "rebooting"  # asked again, and the device reboots
    state = flow.tick()
    assert (state.phase, state.installed.version) == ("idle", "2.0")
    assert statuses(server) == ["rebooting", "rebooting", "success"]


def test_a_reboot_asked_for_that_never_happens_is_bounded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reboot command says yes and the device goes on running: each check-in asks again, and after
    the last request the install is rolled back."""
    flow, server = file_install(tmp_path)
    needing_a_reboot(monkeypatch)
    flow = rebooted_by(flow, ["true"])

    for _ in range(MAX_REBOOT_ATTEMPTS):
        assert flow.tick().phase == "rebooting"
    state = flow.tick()
    assert state.phase == "idle"
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert statuses(server) == ["rebooting", "failure"]
    assert server.reports[1]["detail"] == (
        f"install failed: the device did not restart after {MAX_REBOOT_ATTEMPTS} reboot requests"
    )


def test_an_ab_rollback_whose_reboot_fails_is_reported_once_retried_then_given_up(tmp_path: Path) -> None:
    """Slot b booted and failed its health check; the rollback points the bootloader back at a, but the
    reboot into a fails. b runs until the device restarts, and then a does."""
    bootloader, settings = ab_device(tmp_path)
    announced, server = announced_install(
        tmp_path,
        "rootfs-ab",
        settings,
        "rootfs.img",
        NEW_IMAGE,
        health_commands=[["false"]],
        on_reboot=bootloader.simulate_boot,
    )
    assert announced.tick().phase == "rebooting"
    flow = rebooted_by(announced, REBOOT_COMMAND_FAILS)

    state = flow.tick()  # rebooted into b, unhealthy: rolled back, and its reboot fails
    assert state.phase == "rolling_back"
    assert statuses(server) == ["rebooting", "failure"]
    assert server.reports[1]["detail"].startswith("health check failed:")
    assert server.reports[1]["detail"].endswith(
        f"; rollback failed: reboot_failed: false: exit status 1{NEEDS_ATTENTION}"
    )
    for _ in range(2, MAX_ROLLBACK_ATTEMPTS + 1):
        state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is not None
    assert state.failed_rollback.attempts == MAX_ROLLBACK_ATTEMPTS
    assert len(server.reports) == 2
    env = bootloader.read()
    assert (env["boot_slot"], env["upgrade_available"]) == ("a", "0")
    assert bootloader.simulate_boot() == "a"


def test_a_rollback_whose_reboot_never_happens_is_bounded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, server = file_install(tmp_path)
    flow = rebooted_by(flow, ["true"])
    flow.config.health_commands.append(["false"])
    rollback = rolled_back_with_a_reboot(monkeypatch)

    for _ in range(MAX_ROLLBACK_ATTEMPTS):
        assert flow.tick().phase == "rolling_back_rebooting"
    state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is not None
    assert rollback.calls == MAX_ROLLBACK_ATTEMPTS
    assert statuses(server) == ["failure"]
    assert server.reports[0]["detail"].endswith(
        f"rollback failed: the rollback did not finish in {MAX_ROLLBACK_ATTEMPTS} attempts: cut short, or "
        f"the reboot it asked for never happened{NEEDS_ATTENTION}"
    )


# --- power loss ----------------------------------------------------------------------------------------


def failing_commit(tmp_path: Path, patched: pytest.MonkeyPatch) -> tuple[UpdateFlow, DeploymentsServer]:
    flow, server = file_install(tmp_path)
    patched.setattr(FileModule, "commit", Broken(RuntimeError("the boot environment is read-only")))
    return flow, server


def failing_reboot(tmp_path: Path, patched: pytest.MonkeyPatch) -> tuple[UpdateFlow, DeploymentsServer]:
    flow, server = file_install(tmp_path)
    needing_a_reboot(patched)
    return rebooted_by(flow, REBOOT_COMMAND_FAILS), server


def failing_rollback_reboot(
    tmp_path: Path, patched: pytest.MonkeyPatch
) -> tuple[UpdateFlow, DeploymentsServer]:
    flow, server = file_install(tmp_path)
    flow = rebooted_by(flow, REBOOT_COMMAND_FAILS)
    flow.config.health_commands.append(["false"])
    rolled_back_with_a_reboot(patched)
    return flow, server


@pytest.mark.parametrize(
    ("scenario", "reports", "given_up"),
    [
        (failing_commit, [(1, "installing"), (2, "failure")], False),
        (failing_reboot, [(1, "rebooting"), (2, "rebooting"), (3, "failure")], False),
        (failing_rollback_reboot, [(1, "failure")], True),
    ],
    ids=["commit", "reboot", "rollback's reboot"],
)
def test_a_kill_at_any_step_of_a_failing_commit_or_reboot_ends_the_same_way(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Path, pytest.MonkeyPatch], tuple[UpdateFlow, DeploymentsServer]],
    reports: list[tuple[int, str]],
    given_up: bool,
) -> None:
    """Stopped before or after each state write in turn, then run again at every check-in (each in a new
    worker): the install still ends rolled back (or its rollback given up), the file back to 1.0, the
    news reported once and the outcome once."""
    check_ins = MAX_COMMIT_ATTEMPTS + MAX_REBOOT_ATTEMPTS + MAX_ROLLBACK_ATTEMPTS + 2
    step = 0
    while True:
        step += 1
        killed_at_step = False
        for when in ("before", "after"):
            with monkeypatch.context() as patched:
                (tmp_path / f"{step}-{when}").mkdir()
                flow, server = scenario(tmp_path / f"{step}-{when}", patched)
                killed_at_save(patched, step, when)
                killed = 0
                for _ in range(check_ins):
                    try:
                        UpdateFlow(flow.config, flow.client, flow.checker).tick()
                    except Killed:
                        killed += 1
                state = UpdateState.load(flow.data_dir)

            where = f"killed at save {step} ({when})"
            killed_at_step = killed_at_step or killed > 0
            assert state.phase == "idle", where
            assert state.outbox == (), where
            assert (state.failed_rollback is not None) == given_up, where
            assert state.installed.version is None, where
            assert distinct_reports(server) == reports, where
            assert (flow.data_dir.parent / "etc" / "app.conf").read_bytes() == b"release 1.0\n", where
            if given_up:  # the journal and backups were moved aside before the record was written
                assert list((flow.data_dir / "work").iterdir()) == [], where
        if not killed_at_step:
            break  # fewer state writes than `step`: every one has been killed
    assert step > MAX_COMMIT_ATTEMPTS, "each attempt should be written down before it runs"

"""A rollback that fails is reported once, tried again at a bounded number of check-ins, and then given
up: the agent keeps a record and the module's journal and backups, and goes back to idle, free for the
next deployment. Killed at any step of that, it ends the same way."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleetkeeper_agent.cli import main
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext
from fleetkeeper_agent.modules.bootloader import SimulatedBootloader
from fleetkeeper_agent.modules.file import FileModule
from fleetkeeper_agent.offline import rollback_offline
from fleetkeeper_agent.update_failures import MAX_ROLLBACK_ATTEMPTS
from fleetkeeper_agent.update_state import UpdateState
from fleetkeeper_agent.updates import UpdateFlow
from tests.agent.installkit import (
    NEEDS_ATTENTION,
    NEW_IMAGE,
    OLD_IMAGE,
    Broken,
    Killed,
    announce,
    announced_install,
    distinct_reports,
    file_install,
    killed_at_save,
    status,
)


def failing_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file module installs 2.0 and then breaks: the flow rolls it back."""
    real_install = FileModule.install

    def install_then_fail(self: FileModule, ctx: InstallContext) -> bool:
        real_install(self, ctx)
        raise RuntimeError("a bug in the module")

    monkeypatch.setattr(FileModule, "install", install_then_fail)


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (RuntimeError("the backup is gone"), "RuntimeError: the backup is gone"),
        (
            AgentError("rollback_failed", "cannot restore /etc/app.conf: read-only file system"),
            "rollback_failed: cannot restore /etc/app.conf: read-only file system",
        ),
    ],
)
def test_a_rollback_that_fails_is_reported_once_retried_then_given_up(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    named: str,
) -> None:
    flow, server = file_install(tmp_path)
    failing_install(monkeypatch)
    rollback = Broken(error)
    monkeypatch.setattr(FileModule, "rollback", rollback)

    state = flow.tick()
    assert state.phase == "rolling_back"  # tried again at the next check-in
    assert rollback.calls == 1
    assert UpdateState.load(flow.data_dir).rollback_attempts == 1  # on disk, for the next worker
    assert [report["status"] for report in server.reports] == ["failure"]
    detail = server.reports[0]["detail"]
    assert detail.startswith("install failed: the file module's install raised RuntimeError: a bug")
    assert detail.endswith(f"; rollback failed: {named}{NEEDS_ATTENTION}")

    for attempt in range(2, MAX_ROLLBACK_ATTEMPTS):
        assert flow.tick().phase == "rolling_back"
        assert rollback.calls == attempt
    with caplog.at_level(logging.ERROR, logger="fleetkeeper_agent"):
        state = flow.tick()
    assert rollback.calls == MAX_ROLLBACK_ATTEMPTS
    assert state.phase == "idle"
    assert state.outbox == ()
    assert len(server.reports) == 1  # reported once, at the first failure
    assert state.installed.version is None  # 2.0 was never committed

    record = state.failed_rollback
    assert record is not None
    assert (record.target_path, record.deployment_id, record.module) == ("app/2.0/app.conf", "dep_1", "file")
    assert record.attempts == MAX_ROLLBACK_ATTEMPTS
    assert record.detail == detail
    assert any(
        entry.levelno == logging.ERROR and "gave up rolling back app/2.0/app.conf" in entry.getMessage()
        for entry in caplog.records
    )
    # The module's journal and the backup of 1.0 are kept where the record says, out of the way of
    # the next install; the payload is dropped.
    assert record.kept_dir is not None
    kept = Path(record.kept_dir)
    assert kept.parent == flow.data_dir / "failed"
    assert (kept / "previous").read_bytes() == b"release 1.0\n"
    assert list((flow.data_dir / "work").iterdir()) == []
    assert list((flow.data_dir / "downloads").iterdir()) == []

    shown = status(flow.data_dir, capsys)
    assert shown["phase"] == "idle"
    assert shown["failed_rollback"]["target_path"] == "app/2.0/app.conf"
    assert shown["failed_rollback"]["kept_dir"] == record.kept_dir
    assert shown["failed_rollback"]["detail"].endswith(NEEDS_ATTENTION)

    # Idle: the next check-in neither retries the rollback nor reports again.
    assert flow.tick().phase == "idle"
    assert rollback.calls == MAX_ROLLBACK_ATTEMPTS
    assert len(server.reports) == 1


def test_journal_and_backups_that_cannot_be_moved_aside_stay_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, _ = file_install(tmp_path)
    failing_install(monkeypatch)
    monkeypatch.setattr(FileModule, "rollback", Broken(RuntimeError("the backup is gone")))
    (flow.data_dir / "failed").write_text("in the way\n")  # no directory can be made there

    for _ in range(MAX_ROLLBACK_ATTEMPTS):
        state = flow.tick()
    assert state.phase == "idle"  # given up all the same
    assert state.failed_rollback is not None
    assert state.failed_rollback.kept_dir is not None
    kept = Path(state.failed_rollback.kept_dir)
    assert kept.parent == flow.data_dir / "work"
    assert (kept / "previous").read_bytes() == b"release 1.0\n"


def test_while_a_rollback_is_retried_status_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow, _ = file_install(tmp_path)
    failing_install(monkeypatch)
    monkeypatch.setattr(FileModule, "rollback", Broken(OSError(30, "Read-only file system")))
    flow.tick()

    shown = status(flow.data_dir, capsys)
    assert shown["phase"] == "rolling_back"
    assert shown["rollback_attempts"] == 1
    assert shown["rollback_error"] == "OSError: [Errno 30] Read-only file system"
    assert shown["failed_rollback"] is None


def test_a_rollback_that_succeeds_when_tried_again_reports_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, server = file_install(tmp_path)
    failing_install(monkeypatch)
    real_rollback = FileModule.rollback
    calls = []

    def fails_once(self: FileModule, ctx: InstallContext) -> bool:
        calls.append(ctx.work_dir)
        if len(calls) == 1:
            raise OSError(16, "Device or resource busy")
        return real_rollback(self, ctx)

    monkeypatch.setattr(FileModule, "rollback", fails_once)
    assert flow.tick().phase == "rolling_back"

    state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is None
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert [report["status"] for report in server.reports] == ["failure"]
    assert list((flow.data_dir / "work").iterdir()) == []
    assert not (flow.data_dir / "failed").exists()


def test_a_commit_clears_the_record_of_a_failed_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, server = file_install(tmp_path)
    failing_install(monkeypatch)
    monkeypatch.setattr(FileModule, "rollback", Broken(RuntimeError("the backup is gone")))
    for _ in range(MAX_ROLLBACK_ATTEMPTS):
        state = flow.tick()
    assert state.failed_rollback is not None

    # The next deployment installs and commits 3.0: the device runs a release it committed again.
    monkeypatch.undo()
    announce(flow, "file", "app.conf", b"release 3.0\n", version="3.0", deployment_id="dep_2")
    state = flow.tick()
    assert state.phase == "idle"
    assert (state.installed.version, state.failed_rollback) == ("3.0", None)
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 3.0\n"
    assert [report["status"] for report in server.reports] == ["failure", "success"]


# --- an offline install, rolled back by the operator ----------------------------------------------


def test_an_offline_rollback_that_fails_says_so_and_can_be_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, _ = file_install(tmp_path)
    state = UpdateState.load(flow.data_dir)
    state.moved(state.phase, deployment_id=None).save(flow.data_dir)  # as `install BUNDLE` leaves it
    assert flow.advance(UpdateState.load(flow.data_dir)).phase == "awaiting_commit"
    rollback = Broken(OSError(5, "Input/output error"))
    monkeypatch.setattr(FileModule, "rollback", rollback)

    for attempt in range(1, MAX_ROLLBACK_ATTEMPTS):
        with pytest.raises(AgentError) as caught:
            rollback_offline(flow.config)
        assert caught.value.code == "rollback_failed"
        assert "OSError: [Errno 5] Input/output error" in caught.value.message
        assert f"attempt {attempt} of {MAX_ROLLBACK_ATTEMPTS}" in caught.value.message
        assert UpdateState.load(flow.data_dir).phase == "rolling_back"
    with pytest.raises(AgentError) as caught:
        rollback_offline(flow.config)
    assert caught.value.code == "rollback_failed"
    assert "gave up" in caught.value.message
    state = UpdateState.load(flow.data_dir)
    assert state.phase == "idle"
    assert state.failed_rollback is not None
    assert rollback.calls == MAX_ROLLBACK_ATTEMPTS


def test_an_offline_install_whose_rollback_fails_says_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    left = UpdateState(
        phase="rolling_back", detail="install failed: no space", rollback_error="OSError: [Errno 5]"
    )
    monkeypatch.setattr("fleetkeeper_agent.offline.install_bundle", lambda config, path: left)

    assert main(["--data-dir", str(tmp_path), "install", str(tmp_path / "bundle.tar")]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "error: install_failed: install failed: no space; rollback failed: OSError: [Errno 5]"
            " (run `fleetkeeper-agent rollback` again)"
        )
    )


# --- rootfs-ab: the bootloader's own counter is the last word --------------------------------------


def test_a_failed_ab_rollback_leaves_the_trial_to_the_bootloader_which_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new slot booted but failed its health check, and the boot environment cannot be written
    (fw_setenv failing): the rollback cannot point the bootloader back. The agent gives up without
    touching the environment, which still has the new slot on trial (upgrade_available=1): within
    `bootlimit` boots, the bootloader goes back to the old slot by itself, and the old slot is still
    there to go back to."""
    (tmp_path / "slot-a").write_bytes(OLD_IMAGE)
    (tmp_path / "slot-b").write_bytes(b"whatever was there before")
    bootloader = SimulatedBootloader(tmp_path / "bootenv.txt", ["a", "b"], cmdline_file=tmp_path / "cmdline")
    bootloader.write({"boot_slot": "a", "upgrade_available": "0", "bootcount": "0"})
    assert bootloader.simulate_boot() == "a"
    settings = {
        "slots": {"a": str(tmp_path / "slot-a"), "b": str(tmp_path / "slot-b")},
        "bootloader": "simulated",
        "simulated_env": str(tmp_path / "bootenv.txt"),
        "cmdline": str(tmp_path / "cmdline"),
    }
    flow, server = announced_install(
        tmp_path,
        "rootfs-ab",
        settings,
        "rootfs.img",
        NEW_IMAGE,
        health_commands=[["false"]],
        on_reboot=bootloader.simulate_boot,
    )
    assert flow.tick().phase == "rebooting"
    assert bootloader.read()["boot_slot"] == "b"

    def unwritable(self: SimulatedBootloader, values: object) -> None:
        raise AgentError("bootloader_error", "fw_setenv: cannot write the environment")

    with monkeypatch.context() as patched:
        patched.setattr(SimulatedBootloader, "write", unwritable)
        for _ in range(MAX_ROLLBACK_ATTEMPTS):
            state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is not None
    assert state.failed_rollback.module == "rootfs-ab"
    assert [report["status"] for report in server.reports] == ["rebooting", "failure"]
    detail = server.reports[1]["detail"]
    assert detail.startswith("health check failed:")
    assert detail.endswith(
        f"; rollback failed: rollback_failed: fw_setenv: cannot write the environment{NEEDS_ATTENTION}"
    )
    env = bootloader.read()
    assert (env["boot_slot"], env["upgrade_available"], env["bootcount"]) == ("b", "1", "1")

    # Idle again, the agent takes the next deployment, but the module does not write slot a, the
    # bootloader's way back, while b is still on trial: a failure, with nothing installed.
    announce(flow, "rootfs-ab", "rootfs.img", b"rootfs 3.0 " * 2000, version="3.0", deployment_id="dep_2")
    assert flow.tick().phase == "idle"
    assert [report["status"] for report in server.reports] == ["rebooting", "failure", "failure"]
    assert "slot b runs on trial" in server.reports[2]["detail"]
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE

    assert [bootloader.simulate_boot() for _ in range(3)] == ["b", "b", "a"]  # bootlimit 3
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE
    assert bootloader.read()["upgrade_available"] == "0"


# --- power loss ---------------------------------------------------------------------------------------


def test_a_kill_at_any_step_of_a_failing_rollback_ends_given_up_and_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = 0
    while True:
        step += 1
        killed_at_step = False
        for when in ("before", "after"):
            with monkeypatch.context() as patched:
                (tmp_path / f"{step}-{when}").mkdir()
                flow, server = file_install(tmp_path / f"{step}-{when}")
                failing_install(patched)
                rollback = Broken(RuntimeError("the backup is gone"))
                patched.setattr(FileModule, "rollback", rollback)
                killed_at_save(patched, step, when)
                killed = 0
                for _ in range(2 * MAX_ROLLBACK_ATTEMPTS):  # check-ins, each in a new worker
                    try:
                        UpdateFlow(flow.config, flow.client, flow.checker).tick()
                    except Killed:
                        killed += 1
                state = UpdateState.load(flow.data_dir)

            where = f"killed at save {step} ({when})"
            killed_at_step = killed_at_step or killed > 0
            assert state.phase == "idle", where
            assert state.outbox == (), where
            assert state.failed_rollback is not None, where
            assert distinct_reports(server) == [(1, "failure")], where
            # An attempt cut short counts: a rollback that kills the agent cannot hold it either.
            assert MAX_ROLLBACK_ATTEMPTS - killed <= rollback.calls <= MAX_ROLLBACK_ATTEMPTS, where
            assert state.failed_rollback.kept_dir is not None, where
            assert (Path(state.failed_rollback.kept_dir) / "previous").read_bytes() == b"release 1.0\n", where
            assert list((flow.data_dir / "work").iterdir()) == [], where
        if not killed_at_step:
            break  # fewer state writes than `step`: every one has been killed
    assert step > MAX_ROLLBACK_ATTEMPTS, "each attempt should be written down before it runs"

"""An activation check that cannot answer after the reboot (a bootloader not answering yet) never holds
the agent: it is reported once, asked again at a bounded number of check-ins, and then the release is
taken as not activated and rolled back; one that answers on a later attempt goes on as usual. Killed at
any step of that, the agent ends the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext
from fleetkeeper_agent.modules.file import FileModule
from fleetkeeper_agent.modules.rootfs_ab import RootfsABModule
from fleetkeeper_agent.update_failures import MAX_ACTIVATION_ATTEMPTS, MAX_ROLLBACK_ATTEMPTS
from fleetkeeper_agent.update_state import UpdateState
from fleetkeeper_agent.updates import UpdateFlow
from tests.agent.installkit import (
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

NOT_ANSWERING = AgentError("bootloader_error", "the bootloader is not answering yet")
ACTIVATION_RETRIED = (
    "; the check is made again at the next check-ins, and the install rolled back after "
    f"{MAX_ACTIVATION_ATTEMPTS} attempts"
)


class AnswersAfter(Broken):
    """An activation check that fails its first `failures` calls, then says the new release runs."""

    def __init__(self, error: Exception, failures: int) -> None:
        super().__init__(error)
        self.failures = failures

    def __call__(self, ctx: InstallContext) -> bool:
        if self.calls < self.failures:
            return super().__call__(ctx)
        self.calls += 1
        return True


class KillsTheAgent(Broken):
    """An activation check that never returns: it hangs until a watchdog kills the agent."""

    def __init__(self) -> None:
        super().__init__(RuntimeError("unused"))

    def __call__(self, ctx: InstallContext) -> bool:
        self.calls += 1
        raise Killed


def rebooted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[UpdateFlow, DeploymentsServer]:
    """file_install's release, installed with a reboot, which happened: the next check-in asks the
    module whether 2.0 runs."""
    flow, server = file_install(tmp_path)
    needing_a_reboot(monkeypatch)
    assert flow.tick().phase == "rebooting"
    assert statuses(server) == ["rebooting"]
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 2.0\n"
    return flow, server


def test_an_activation_check_that_keeps_failing_is_reported_once_retried_then_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow, server = rebooted(tmp_path, monkeypatch)
    activated = Broken(NOT_ANSWERING)
    monkeypatch.setattr(FileModule, "activated", activated)

    state = flow.tick()  # no AgentError escapes the check-in
    assert state.phase == "rebooting"  # asked again at the next check-in
    assert activated.calls == 1
    assert UpdateState.load(flow.data_dir).activation_attempts == 1  # on disk, for the next worker
    # Not a failure: the server would count the install as over (or offer it again) while the device
    # is still at it. The status it already has, and the reason in the detail.
    assert statuses(server) == ["rebooting", "rebooting"]
    assert server.reports[1]["detail"] == (
        f"the activation check failed: the bootloader is not answering yet{ACTIVATION_RETRIED}"
    )
    shown = status(flow.data_dir, capsys)
    assert (shown["phase"], shown["activation_attempts"], shown["activation_error"]) == (
        "rebooting",
        1,
        "the bootloader is not answering yet",
    )

    for attempt in range(2, MAX_ACTIVATION_ATTEMPTS):
        assert flow.tick().phase == "rebooting"
        assert activated.calls == attempt
    assert len(server.reports) == 2  # reported once
    state = flow.tick()
    assert activated.calls == MAX_ACTIVATION_ATTEMPTS
    assert state.phase == "idle"
    assert state.outbox == ()
    assert state.installed.version is None  # 2.0 was never committed
    assert state.failed_rollback is None
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert statuses(server) == ["rebooting", "rebooting", "failure"]  # the outcome, once
    assert server.reports[2]["detail"] == (
        f"install failed: the activation check failed ({MAX_ACTIVATION_ATTEMPTS} attempts): "
        "the bootloader is not answering yet"
    )
    assert list((flow.data_dir / "work").iterdir()) == []
    assert list((flow.data_dir / "downloads").iterdir()) == []

    assert flow.tick().phase == "idle"
    assert activated.calls == MAX_ACTIVATION_ATTEMPTS
    assert len(server.reports) == 3


def test_an_activation_check_that_answers_when_asked_again_goes_on_to_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, server = rebooted(tmp_path, monkeypatch)
    activated = AnswersAfter(NOT_ANSWERING, failures=2)
    monkeypatch.setattr(FileModule, "activated", activated)

    assert flow.tick().phase == "rebooting"
    assert flow.tick().phase == "rebooting"
    assert UpdateState.load(flow.data_dir).activation_attempts == 2
    state = flow.tick()
    assert activated.calls == 3
    assert (state.phase, state.installed.version) == ("idle", "2.0")
    assert (state.activation_attempts, state.activation_error) == (0, None)
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 2.0\n"
    assert statuses(server) == ["rebooting", "rebooting", "success"]  # no failure


def test_an_ab_activation_check_that_keeps_failing_goes_back_to_the_old_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rootfs-ab: slot b booted, but the module cannot tell which slot runs. After the last attempt
    the release is taken as not activated: the rollback points the bootloader back at a and reboots."""
    bootloader, settings = ab_device(tmp_path)
    announced, server = announced_install(tmp_path, "rootfs-ab", settings, "rootfs.img", NEW_IMAGE)
    boots = []

    def reboot() -> None:  # each a new boot, as the bootloader does it
        boots.append(bootloader.simulate_boot())
        announced.config.boot_id_file.write_text(f"boot-{len(boots) + 1}\n")

    flow = UpdateFlow(announced.config, announced.client, announced.checker, reboot=reboot)
    assert flow.tick().phase == "rebooting"
    assert boots == ["b"]
    assert bootloader.read()["boot_slot"] == "b"
    monkeypatch.setattr(RootfsABModule, "activated", Broken(NOT_ANSWERING))

    for _ in range(MAX_ACTIVATION_ATTEMPTS - 1):
        assert flow.tick().phase == "rebooting"
    state = flow.tick()  # given up: rolled back, which reboots into a
    assert state.phase == "rolling_back_rebooting"
    state = flow.tick()
    assert state.phase == "idle"
    assert state.failed_rollback is None
    assert boots == ["b", "a"]
    env = bootloader.read()
    assert (env["boot_slot"], env["upgrade_available"]) == ("a", "0")
    assert bootloader.simulate_boot() == "a"
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE
    assert statuses(server) == ["rebooting", "rebooting", "failure"]
    assert server.reports[2]["detail"].startswith("install failed: the activation check failed (")


def test_an_activation_attempt_cut_short_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An activation check that kills the agent every time cannot hold it either: the attempts are
    counted before they start."""
    flow, server = rebooted(tmp_path, monkeypatch)
    killing = KillsTheAgent()
    monkeypatch.setattr(FileModule, "activated", killing)

    for _ in range(MAX_ACTIVATION_ATTEMPTS):
        with pytest.raises(Killed):
            UpdateFlow(flow.config, flow.client, flow.checker).tick()
    state = UpdateFlow(flow.config, flow.client, flow.checker).tick()
    assert killing.calls == MAX_ACTIVATION_ATTEMPTS
    assert state.phase == "idle"
    assert (tmp_path / "etc" / "app.conf").read_bytes() == b"release 1.0\n"
    assert statuses(server) == ["rebooting", "failure"]
    assert server.reports[1]["detail"] == (
        f"install failed: the activation check failed ({MAX_ACTIVATION_ATTEMPTS} attempts): "
        "each attempt was cut short"
    )


# --- power loss ----------------------------------------------------------------------------------------


def rebooting_by_command(
    tmp_path: Path, patched: pytest.MonkeyPatch, activated: Broken
) -> tuple[UpdateFlow, DeploymentsServer]:
    """file_install's release, with a reboot that happens (the configured command starts a new boot), and
    `activated` as the module's activation check."""
    flow, server = file_install(tmp_path)
    needing_a_reboot(patched)
    patched.setattr(FileModule, "activated", activated)
    boot_id = flow.config.boot_id_file
    return rebooted_by(flow, ["sh", "-c", f"echo boot-2 > '{boot_id}'"]), server


@pytest.mark.parametrize(
    ("make_check", "reports", "version"),
    [
        (lambda: Broken(NOT_ANSWERING), [(1, "rebooting"), (2, "rebooting"), (3, "failure")], None),
        (
            lambda: AnswersAfter(NOT_ANSWERING, failures=2),
            [(1, "rebooting"), (2, "rebooting"), (3, "success")],
            "2.0",
        ),
    ],
    ids=["keeps failing", "answers at the third call"],
)
def test_a_kill_at_any_step_of_a_failing_activation_check_ends_the_same_way(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_check: Callable[[], Broken],
    reports: list[tuple[int, str]],
    version: str | None,
) -> None:
    """Stopped before or after each state write in turn, then run again at every check-in (each in a new
    worker): an activation check that keeps failing still ends rolled back, the news reported once and
    the outcome once; one that answers at its third call still ends committed."""
    check_ins = MAX_ACTIVATION_ATTEMPTS + MAX_ROLLBACK_ATTEMPTS + 3
    step = 0
    while True:
        step += 1
        killed_at_step = False
        for when in ("before", "after"):
            with monkeypatch.context() as patched:
                (tmp_path / f"{step}-{when}").mkdir()
                activated = make_check()
                flow, server = rebooting_by_command(tmp_path / f"{step}-{when}", patched, activated)
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
            assert state.failed_rollback is None, where
            assert state.installed.version == version, where
            assert distinct_reports(server) == reports, where
            content = b"release 2.0\n" if version else b"release 1.0\n"
            assert (flow.data_dir.parent / "etc" / "app.conf").read_bytes() == content, where
            if version is None:  # an attempt cut short counts: the check is never asked more often
                assert MAX_ACTIVATION_ATTEMPTS - killed <= activated.calls <= MAX_ACTIVATION_ATTEMPTS, where
        if not killed_at_step:
            break  # fewer state writes than `step`: every one has been killed
    assert step > MAX_ACTIVATION_ATTEMPTS, "each attempt should be written down before it runs"

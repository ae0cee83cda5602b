"""`script`: the payload run with its phase; the environment it gets; failures carry the output's tail."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext, UpdateModule, load_module
from tests.agent.modulekit import context

# The script keeps a "live" file as the thing it installs, with a backup for rollback: idempotent.
SCRIPT = """#!/bin/sh
echo "$1 $FLEETKEEPER_RELEASE_NAME $FLEETKEEPER_RELEASE_VERSION $FLEETKEEPER_PHASE" >> "$LOG"
case $1 in
  install)
    [ -e "$FLEETKEEPER_WORK_DIR/backup" ] || cp "$LIVE" "$FLEETKEEPER_WORK_DIR/backup"
    echo "$FLEETKEEPER_RELEASE_VERSION" > "$LIVE"
    [ -z "$WANT_REBOOT" ] || touch "$FLEETKEEPER_REBOOT_REQUEST" ;;
  commit) ;;
  rollback) cp "$FLEETKEEPER_WORK_DIR/backup" "$LIVE" ;;
  *) exit 2 ;;
esac
"""


def script_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str = SCRIPT, timeout: float = 60
) -> tuple[UpdateModule, InstallContext]:
    live = tmp_path / "live.txt"
    live.write_text("1.0\n")
    monkeypatch.setenv("LIVE", str(live))
    monkeypatch.setenv("LOG", str(tmp_path / "phases.log"))
    payload = tmp_path / "update.sh"
    payload.write_text(script)  # not executable: the module makes its own copy executable
    settings = {"timeout": timeout}
    return load_module("script", settings), context(tmp_path, payload, "script", settings, version="2.0")


def test_install_then_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, ctx = script_setup(tmp_path, monkeypatch)
    assert module.install(ctx) is False
    assert module.install(ctx) is False
    module.commit(ctx)
    module.commit(ctx)
    assert (tmp_path / "live.txt").read_text() == "2.0\n"
    assert (tmp_path / "phases.log").read_text().splitlines() == [
        "install app 2.0 install",
        "install app 2.0 install",
        "commit app 2.0 commit",
        "commit app 2.0 commit",
    ]
    assert (ctx.work_dir / "install.log").exists()


def test_install_then_rollback_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, ctx = script_setup(tmp_path, monkeypatch)
    module.install(ctx)
    assert module.rollback(ctx) is False
    assert module.rollback(ctx) is False
    assert (tmp_path / "live.txt").read_text() == "1.0\n"


def test_the_script_can_ask_for_a_reboot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, ctx = script_setup(tmp_path, monkeypatch)
    monkeypatch.setenv("WANT_REBOOT", "1")
    assert module.install(ctx) is True
    monkeypatch.delenv("WANT_REBOOT")
    assert module.install(ctx) is False


def test_a_failure_carries_the_tail_of_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = (
        '#!/bin/sh\nfor i in $(seq 1 500); do echo "line $i of noise"; done\n'
        "echo 'E: disk full' >&2\nexit 3\n"
    )
    module, ctx = script_setup(tmp_path, monkeypatch, failing)
    with pytest.raises(AgentError) as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    assert "exited with 3" in caught.value.message
    assert caught.value.message.rstrip().endswith("E: disk full")
    assert "line 500 of noise" in caught.value.message
    assert "line 1 of noise" not in caught.value.message  # the tail, not the whole output
    assert "line 1 of noise" in (ctx.work_dir / "install.log").read_text()  # the whole is kept


def test_a_script_over_its_timeout_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging = "#!/bin/sh\necho started\nsleep 600 &\nsleep 600\n"
    module, ctx = script_setup(tmp_path, monkeypatch, hanging, timeout=0.5)
    with pytest.raises(AgentError, match=r"did not finish within 0\.5 s: started") as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"


def test_rollback_before_install_ran_does_nothing_and_commit_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, ctx = script_setup(tmp_path, monkeypatch)
    assert module.rollback(ctx) is False
    with pytest.raises(AgentError) as caught:
        module.commit(ctx)
    assert caught.value.code == "commit_failed"
    assert not (tmp_path / "phases.log").exists()


def test_a_payload_that_cannot_run_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, ctx = script_setup(tmp_path, monkeypatch, "not a script, no interpreter line\n")
    with pytest.raises(AgentError) as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    assert "cannot run" in caught.value.message

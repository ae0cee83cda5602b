"""The agent's side of the control channel that needs no server: `[terminal]` in the configuration,
the frames, and the daemon keeping the channel's process alive. File transfer: test_file_transfer.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetkeeper_agent.channel import channel_url
from fleetkeeper_agent.channel_protocol import decode_data, encode_data
from fleetkeeper_agent.config import TerminalConfig, load_config
from fleetkeeper_agent.errors import AgentError
from tests.terminal.support import descendants


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_terminal_table_is_read_and_defaults_to_a_non_root_user_without_file_roots(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, "")).terminal == TerminalConfig()
    assert TerminalConfig().user != "root"
    assert TerminalConfig().file_roots == ()
    config = load_config(
        write(
            tmp_path,
            """
[terminal]
enabled = false
user = "ops"
shell = "/bin/bash"
idle_timeout = 60
max_session_seconds = 600
max_sessions = 2
file_roots = ["/var/log", "spool"]
max_file_bytes = 1048576
""",
        )
    )
    assert config.terminal == TerminalConfig(  # noqa: S604 - a login shell setting, not a subprocess
        enabled=False,
        user="ops",
        shell="/bin/bash",
        idle_timeout=60.0,
        max_session_seconds=600.0,
        max_sessions=2,
        file_roots=(Path("/var/log"), tmp_path / "spool"),
        max_file_bytes=1048576,
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[terminal]\nenable = false", "unknown key terminal.enable"),
        ('[terminal]\nenabled = "no"', "terminal.enabled"),
        ("[terminal]\nidle_timeout = 0", "terminal.idle_timeout"),
        ("[terminal]\nmax_sessions = 1.5", "terminal.max_sessions"),
        ('[terminal]\nfile_roots = "/tmp"', "terminal.file_roots"),
        ('[terminal]\nuser = ""', "terminal.user"),
        ("terminal = 3", "terminal"),
    ],
)
def test_a_wrong_terminal_key_or_value_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(AgentError) as raised:
        load_config(write(tmp_path, text))
    assert raised.value.code == "invalid_config"
    assert named in raised.value.message


def test_data_frames_and_the_channel_url() -> None:
    frame = encode_data("term_" + "a" * 26, b"\x00bytes")
    assert decode_data(frame) == ("term_" + "a" * 26, b"\x00bytes")
    assert decode_data(b"") is None
    assert decode_data(b"\x09abc") is None
    assert (
        channel_url("https://devices.example.com:8443/") == "wss://devices.example.com:8443/device/v1/channel"
    )


def test_the_daemon_runs_the_channel_and_restarts_it_when_it_dies(tmp_path: Path) -> None:
    config = write(tmp_path, f'data_dir = "{tmp_path / "data"}"\n[check_in]\ninterval = 3600\n')
    log = tmp_path / "daemon.log"
    with log.open("w") as output:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fleetkeeper_agent", "--config", str(config), "run"], stderr=output
        )
    try:
        first = wait_for_channel(daemon.pid, log)
        os.kill(first, signal.SIGKILL)
        second = wait_for_channel(daemon.pid, log, other_than=first)
        assert second != first
        assert "the control channel stopped" in log.read_text()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert daemon.returncode == 0
    assert descendants(daemon.pid) == []


def wait_for_channel(daemon: int, log: Path, other_than: int | None = None) -> int:
    """The pid of the daemon's `channel` child, once it runs and has said it waits for enrollment."""
    for _ in range(300):
        for pid in descendants(daemon):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
            except OSError:
                continue
            if b"channel" in command and pid != other_than and "not enrolled yet" in log.read_text():
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no channel process:\n{log.read_text()[-2000:]}")

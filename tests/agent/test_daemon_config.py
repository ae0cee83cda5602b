"""The agent's configuration file, its back-off schedule, and the daemon's lifecycle."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleetkeeper_agent.config import AgentConfig, load_config
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.supervisor import next_delay
from fleetkeeper_agent.update_state import Report, UpdateState


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_a_full_configuration_is_read_with_paths_relative_to_it(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
data_dir = "data"
[enrollment]
server_url = "https://devices.example.com:8443"
ca = "ca.pem"
device_type = "rpi4"
attributes = { site = "plant-3" }
[trust]
image_root = "/etc/fleetkeeper/image-root.json"
[check_in]
interval = 60
jitter = 0.1
[install]
busy_command = "/usr/local/bin/busy --quiet"
health_commands = [["systemctl", "is-active", "app"]]
[modules.file]
directory = "/opt/app"
""",
        )
    )
    assert config.data_dir == tmp_path / "data"
    assert config.enrollment.ca == tmp_path / "ca.pem"
    assert config.enrollment.attributes == {"site": "plant-3"}
    assert config.image_root == Path("/etc/fleetkeeper/image-root.json")
    assert config.check_in_interval == 60.0
    assert config.busy_command == ["/usr/local/bin/busy", "--quiet"]
    assert config.health_commands == [["systemctl", "is-active", "app"]]
    assert config.modules == {"file": {"directory": "/opt/app"}}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("check_in_intervall = 5", "unknown key check_in_intervall"),
        ("[check_in]\ninterval = 0", "check_in.interval"),
        ("[check_in]\ninterval = true", "check_in.interval"),
        ("[install]\nhealth_commands = [[1]]", "install.health_commands[0]"),
        ("[install]\nbusy_command = []", "install.busy_command"),
        ("[enrollment]\nattributes = { a = 1 }", "enrollment.attributes"),
        ("[modules]\nfile = 3", "modules.file"),
        ("data_dir = [", "agent.toml"),
    ],
)
def test_a_wrong_key_or_value_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(AgentError) as raised:
        load_config(write(tmp_path, text))
    assert raised.value.code == "invalid_config"
    assert named in raised.value.message


def test_no_file_is_the_defaults_unless_it_was_asked_for(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.toml") == AgentConfig()
    with pytest.raises(AgentError, match="invalid_config"):
        load_config(tmp_path / "absent.toml", required=True)


def test_back_off_doubles_after_each_failure_up_to_the_limit() -> None:
    config = AgentConfig(check_in_interval=300, jitter=0.2, max_backoff=100)
    assert [next_delay(config, failures) for failures in (1, 2, 3, 4, 5)] == [10, 20, 40, 80, 100]
    delays = {next_delay(config, 0) for _ in range(50)}
    assert all(240 <= delay <= 360 for delay in delays)
    assert len(delays) > 1  # jitter


def test_the_update_state_survives_a_round_trip_and_a_damaged_file_is_named(tmp_path: Path) -> None:
    state = UpdateState().queue("dep_1", "downloading").moved("downloading", deployment_id="dep_1")
    state.save(tmp_path)
    loaded = UpdateState.load(tmp_path)
    assert loaded == state
    assert loaded.outbox == (Report("dep_1", 1, "downloading"),)
    assert (tmp_path / "update.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "update.json").write_text('{"phase": "exploding"}')
    with pytest.raises(AgentError, match="invalid_state"):
        UpdateState.load(tmp_path)


def test_the_daemon_stops_on_sigterm_with_status_0(tmp_path: Path) -> None:
    config = write(tmp_path, f'data_dir = "{tmp_path / "data"}"\n[check_in]\ninterval = 3600\n')
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fleetkeeper_agent", "--config", str(config), "run"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert daemon.stderr is not None
    # Signalled once its first check-in has said why it could not work: its handlers are in place.
    for line in daemon.stderr:
        if "not_enrolled" in line:
            break
    else:
        raise AssertionError("the daemon ended before its first check-in")
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    assert "stopped" in stderr

"""Configuration: sources, precedence, and start-up refusing invalid settings by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetkeeper.core.config import ConfigError, load_settings
from tests.conftest import run_fleetkeeper


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLEETKEEPER_"):
            monkeypatch.delenv(key)
    settings = load_settings()
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.device_port == 8443
    assert settings.data_dir == Path("fleetkeeper-data")
    assert settings.is_sqlite
    assert settings.resolved_database_url.endswith("fleetkeeper-data/fleetkeeper.db")


def test_precedence_toml_then_environment_then_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "fleetkeeper.toml"
    config.write_text('port = 9001\ndevice_port = 9002\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    monkeypatch.setenv("FLEETKEEPER_DEVICE_PORT", "9102")
    monkeypatch.setenv("FLEETKEEPER_HOST", "127.0.0.2")
    settings = load_settings(config_file=config, host="127.0.0.3")
    assert settings.port == 9001  # only in the file
    assert settings.device_port == 9102  # the environment beats the file
    assert settings.host == "127.0.0.3"  # an option beats both
    assert settings.log_level == "debug"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "fleetkeeper.toml"
    config.write_text("port = 9011\n")
    monkeypatch.setenv("FLEETKEEPER_CONFIG_FILE", str(config))
    assert load_settings().port == 9011


def test_postgres_url_gets_the_async_driver() -> None:
    settings = load_settings(database_url="postgresql://fk@db.example/fleet")
    assert settings.resolved_database_url == "postgresql+asyncpg://fk@db.example/fleet"
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"port": "eighty"}, "port (FLEETKEEPER_PORT)"),
        ({"port": 70000}, "port (FLEETKEEPER_PORT)"),
        ({"database_url": "mysql://x"}, "database_url (FLEETKEEPER_DATABASE_URL)"),
        ({"log_level": "loud"}, "log_level (FLEETKEEPER_LOG_LEVEL)"),
        ({"device_server_names": []}, "device_server_names (FLEETKEEPER_DEVICE_SERVER_NAMES)"),
        ({"tls_cert": "/nonexistent.pem"}, "tls_cert and tls_key must be given together"),
    ],
)
def test_invalid_values_name_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert named in str(caught.value)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "fleetkeeper.toml"
    config.write_text("prot = 8080\n")
    with pytest.raises(ConfigError, match="prot: unknown setting"):
        load_settings(config_file=config)


def test_malformed_and_missing_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=broken)
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(config_file=tmp_path / "absent.toml")


def test_serve_refuses_invalid_environment_naming_the_setting(tmp_path: Path) -> None:
    result = run_fleetkeeper(
        "serve", "--data-dir", str(tmp_path / "d"), env={"FLEETKEEPER_PORT": "not-a-port"}
    )
    assert result.returncode == 2
    assert "FLEETKEEPER_PORT" in result.stderr
    assert "valid integer" in result.stderr
    assert not (tmp_path / "d").exists(), "nothing is created before the configuration is valid"


def test_serve_refuses_invalid_file_naming_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "fleetkeeper.toml"
    config.write_text('device_port = "x"\n')
    result = run_fleetkeeper("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "device_port (FLEETKEEPER_DEVICE_PORT)" in result.stderr

"""The command line: argument errors are usage errors (exit 2), expected failures one line (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetkeeper_agent.cli import main


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err


ENROLL = ["enroll", "--server", "https://127.0.0.1:8443", "--ca", "ca.crt", "--device-type", "rpi4"]


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert "required" in usage_error(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["enroll", "--ca", "ca.crt", "--device-type", "rpi4"], "--server"),
        (["enroll", "--server", "https://x", "--device-type", "rpi4"], "--ca"),
        (["enroll", "--server", "https://x", "--ca", "ca.crt"], "--device-type"),
        ([*ENROLL[:-1], "rpi 4"], "device type"),
        ([*ENROLL[:-1], "x" * 65], "device type"),
        ([*ENROLL, "--key-type", "rsa"], "invalid choice"),
        ([*ENROLL, "--attribute", "site"], "KEY=VALUE"),
        ([*ENROLL, "--attribute", "bad.key=1"], "KEY=VALUE"),
        ([*ENROLL, "--wait", "-1"], "0 or more"),
        ([*ENROLL, "--wait", "soon"], "not a number"),
        (["renew", "--if-expiring-within", "-3"], "days"),
        (["rotate-key", "--key-type", "dsa"], "invalid choice"),
        (["inventory", "--attribute", "=x"], "KEY=VALUE"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_argument_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert message in usage_error(capsys, "--data-dir", "/nonexistent", *argv)


def test_a_bad_mac_is_an_error_with_a_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--data-dir", str(tmp_path), *ENROLL, "--mac", "not-a-mac"])
    assert status == 1
    assert capsys.readouterr().err.startswith("error: invalid_identity: mac")


def test_an_http_server_url_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    argv = ["enroll", "--server", "http://127.0.0.1:8443", "--ca", str(ca), "--device-type", "rpi4"]
    assert main(["--data-dir", str(tmp_path / "d"), *argv]) == 1
    assert "invalid_server_url" in capsys.readouterr().err


def test_a_missing_ca_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "enroll",
        "--server",
        "https://127.0.0.1:8443",
        "--ca",
        str(tmp_path / "no.crt"),
        "--device-type",
        "t",
    ]
    assert main(["--data-dir", str(tmp_path / "d"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid_ca: cannot read")
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["renew", "rotate-key", "identity", ["inventory", "--send"]])
def test_commands_that_need_an_enrollment_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str | list[str]
) -> None:
    argv = command if isinstance(command, list) else [command]
    assert main(["--data-dir", str(tmp_path), *argv]) == 1
    assert capsys.readouterr().err.startswith("error: not_enrolled:")


def test_inventory_prints_json_before_enrollment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert (
        main(["--data-dir", str(tmp_path), "inventory", "--device-type", "rpi4", "--attribute", "line=7"])
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["device_type"] == "rpi4"
    assert document["attributes"] == {"line": "7"}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == "0.1.0"

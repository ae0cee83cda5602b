from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fleetkeeper.cli.main import app
from fleetkeeper.releases.artifact import read_artifact
from fleetkeeper.releases.trust import InitialTrust
from fleetkeeper.releases.verification import verify_release
from tests.releases.conftest import NOW

runner = CliRunner()


def test_keys_create_and_sign_offline(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    fresh = tmp_path / "fresh"
    result = runner.invoke(app, ["keys", "init", str(fresh), "--threshold", "2", "--count", "3"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["keys", "init", str(fresh)])
    assert again.exit_code == 1
    assert "keys_exist" in again.output
    assert "Traceback" not in again.output

    payload = tmp_path / "app.bin"
    payload.write_bytes(b"payload")
    artifact = tmp_path / "app.fkr"
    created = runner.invoke(
        app,
        [
            "release", "create", str(payload), "--name", "app", "--version", "2.0", "--counter", "3",
            "--type", "file", "--device-type", "rpi4", "--depends", "os=1", "-o", str(artifact),
        ],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    current = tmp_path / "targets.json"
    current.write_bytes(trust.targets.to_bytes())
    signed = runner.invoke(
        app, ["release", "sign", str(artifact), "--keys", str(keys_dir), "--current-targets", str(current)]
    )
    assert signed.exit_code == 0, signed.output
    assert "targets v2, 1 signature" in signed.output
    verified = verify_release(
        read_artifact(artifact, max_bytes=1 << 20), trust.root, trust.targets, max_bytes=1 << 20, now=NOW
    )
    assert verified.manifest["depends"] == {"os": "1"}


def test_errors_are_one_line_with_the_code(tmp_path: Path) -> None:
    payload = tmp_path / "app.bin"
    payload.write_bytes(b"x")
    result = runner.invoke(
        app,
        [
            "release", "create", str(payload), "--name", "app", "--version", "1", "--counter", "0",
            "--type", "exe", "--device-type", "rpi4", "-o", str(tmp_path / "a.fkr"),
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().startswith("fleetkeeper: invalid_artifact:")
    assert len(result.output.strip().splitlines()) == 1


def test_sign_needs_a_source_of_current_targets(tmp_path: Path, keys_dir: Path) -> None:
    result = runner.invoke(app, ["release", "sign", str(tmp_path / "a.fkr"), "--keys", str(keys_dir)])
    assert result.exit_code == 1
    assert "invalid_argument" in result.output

"""Offline installs: a bundle exported by the server, installed by an agent with the server gone."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.e2e.fleet import Agent, Fleet

pytestmark = pytest.mark.timeout(600)


def agent_command(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent.command(*args), capture_output=True, text=True, timeout=120, check=False)


async def export(fleet: Fleet, version: str, path: Path) -> Path:
    response = await fleet.api.client.get(
        f"/api/v1/releases/app/{version}/bundle", params={"device_type": "rpi4"}, headers=fleet.admin
    )
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


def tampered(bundle: Path, out: Path, member_prefix: str) -> Path:
    """The same bundle with the last byte of one member flipped."""
    with tarfile.open(bundle) as source, tarfile.open(out, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith(member_prefix):
                data = data[:-2] + bytes([data[-2] ^ 1]) + data[-1:]
            target.addfile(member, io.BytesIO(data))
    return out


async def test_a_bundle_installs_with_the_server_gone_and_a_tampered_one_is_refused(
    fleet: Fleet, tmp_path: Path
) -> None:
    await fleet.release("app", "1", b"offline release 1\n", counter=1, file_name="app.bin")
    await fleet.release("app", "2", b"offline release 2\n", counter=2, file_name="app.bin")
    one = await export(fleet, "1", tmp_path / "app-1.tar")
    two = await export(fleet, "2", tmp_path / "app-2.tar")
    agent = fleet.agent("air-gapped")
    fleet.server.stop()  # the network is off from here on: nothing but the bundle and the trusted root

    bad_target = tampered(two, tmp_path / "bad-target.tar", "targets/")
    refused = agent_command(agent, "install", str(bad_target))
    assert refused.returncode == 1
    assert "error: hash_mismatch" in refused.stderr or "error: download_too_large" in refused.stderr
    bad_metadata = tampered(two, tmp_path / "bad-metadata.tar", "metadata/timestamp")
    refused = agent_command(agent, "install", str(bad_metadata))
    assert refused.returncode == 1
    assert "error: invalid_metadata" in refused.stderr, refused.stderr
    assert not agent.installed_file("app.bin").exists()
    assert agent.state().get("phase", "idle") == "idle"

    installed = agent_command(agent, "install", str(two))
    assert installed.returncode == 0, installed.stderr
    assert agent.installed_file("app.bin").read_bytes() == b"offline release 2\n"
    status = json.loads(agent_command(agent, "status").stdout)
    assert status["phase"] == "awaiting_commit"
    busy = agent_command(agent, "install", str(one))
    assert busy.returncode == 1
    assert "error: busy" in busy.stderr
    committed = agent_command(agent, "commit")
    assert committed.returncode == 0, committed.stderr
    status = json.loads(agent_command(agent, "status").stdout)
    assert status["phase"] == "idle"
    assert status["installed"]["version"] == "2"

    # Release 1 is older than what runs now: refused, whatever its signatures.
    older = agent_command(agent, "install", str(one))
    assert older.returncode == 1
    assert "error: rollback_attack" in older.stderr
    assert agent.installed_file("app.bin").read_bytes() == b"offline release 2\n"


async def test_an_offline_install_rolls_back_on_request(fleet: Fleet, tmp_path: Path) -> None:
    await fleet.release("app", "1", b"offline release 1\n", counter=1, file_name="app.bin")
    bundle = await export(fleet, "1", tmp_path / "app-1.tar")
    fleet.server.stop()
    agent = fleet.agent("air-gapped-2")
    agent.installed_file("app.bin").write_bytes(b"factory image\n")
    assert agent_command(agent, "install", str(bundle)).returncode == 0
    assert agent.installed_file("app.bin").read_bytes() == b"offline release 1\n"
    rolled = agent_command(agent, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert agent.installed_file("app.bin").read_bytes() == b"factory image\n"
    nothing = agent_command(agent, "commit")
    assert nothing.returncode == 1
    assert "error: nothing_to_commit" in nothing.stderr

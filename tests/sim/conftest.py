"""fleetkeeper-sim against a real server: the e2e fleet (trust installed, releases signed with offline
keys made in the test) and the simulator as a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.e2e.fleet import Fleet, running_fleet


def sim_command(server: RunningServer, state_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fleetkeeper_sim",
        "--server",
        server.device_url,
        "--ca",
        str(server.ca_cert),
        "--state-dir",
        str(state_dir),
        *args,
    ]


def run_sim(server: RunningServer, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sim_command(server, state_dir, *args), capture_output=True, text=True, timeout=110, check=False
    )


def start_sim(server: RunningServer, state_dir: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    with log.open("w") as errors:
        return subprocess.Popen(
            sim_command(server, state_dir, *args), stdout=subprocess.PIPE, stderr=errors, text=True
        )


def report_of(output: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return document


async def enrollment_token(fleet: Fleet, group: str | None = None) -> str:
    if group is not None:
        created = await fleet.api.client.post(
            "/api/v1/device-groups", json={"name": group}, headers=fleet.admin
        )
        assert created.status_code == 201, created.text
    made = await fleet.api.client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "simulator", "max_uses": 1000, "auto_accept": True, "group": group},
        headers=fleet.admin,
    )
    assert made.status_code == 201, made.text
    secret: str = made.json()["secret"]
    return secret


@pytest.fixture
async def sim_fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def _no_enrollment_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETKEEPER_ENROLLMENT_TOKEN", raising=False)
    assert "FLEETKEEPER_ENROLLMENT_TOKEN" not in os.environ

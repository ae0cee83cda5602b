"""A server and enrolled agents whose control channels are up, for the terminal tests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import fleetkeeper_command
from tests.e2e.fleet import Agent, Fleet


def terminal_toml(**settings: Any) -> str:
    """A [terminal] table; the shell runs as nobody (the tests run as root) with /bin/sh."""
    values: dict[str, Any] = {"user": "nobody", "shell": "/bin/sh", **settings}
    lines = ["[terminal]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


async def enrolled_agent(fleet: Fleet, name: str, **terminal: Any) -> Agent:
    agent = fleet.agent(name, extra_toml=terminal_toml(**terminal))
    # Check-ins are not what these tests are about: one a day is enough.
    agent.config_path.write_text(
        agent.config_path.read_text().replace("interval = 1\n", "interval = 86400\n", 1)
    )
    assert await asyncio.to_thread(agent.run_once) in (0, 1, 3), agent.log()
    pending = await fleet.api.client.get("/api/v1/devices", params={"status": "pending"}, headers=fleet.admin)
    for device in pending.json()["items"]:
        if device["serial"] == name:
            accepted = await fleet.api.client.post(
                f"/api/v1/devices/{device['id']}/accept", headers=fleet.admin
            )
            assert accepted.status_code == 200, accepted.text
    assert await asyncio.to_thread(agent.run_once) in (0, 1), agent.log()
    agent.device_id = agent.identity()["device_id"]
    return agent


@dataclass
class ChannelProcess:
    """`fleetkeeper-agent channel` for one agent."""

    agent: Agent
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, agent: Agent) -> ChannelProcess:
        log = (agent.root / "channel.log").open("ab")
        process = subprocess.Popen(agent.command("channel"), stdout=log, stderr=log)
        return cls(agent, process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return (self.agent.root / "channel.log").read_text(errors="replace")[-4000:]

    async def wait_connected(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while "channel: connected" not in self.log():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            await asyncio.sleep(0.1)

    def children(self) -> list[int]:
        return descendants(self.process.pid)

    def open_ptys(self) -> int:
        count = 0
        for fd in Path(f"/proc/{self.process.pid}/fd").iterdir():
            try:
                if os.readlink(fd) == "/dev/ptmx":
                    count += 1
            except OSError:
                continue
        return count


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (zombies included: an unreaped shell is a leak too)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


async def run_terminal(
    server_url: str, token: str, device_id: str, typed: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """`fleetkeeper terminal DEVICE` with `typed` on its standard input (a pipe, not a tty)."""
    return await run_cli("terminal", device_id, "--server", server_url, "--token", token, *args, typed=typed)


async def run_cli(*args: str, typed: str = "") -> subprocess.CompletedProcess[str]:
    """The operator's CLI, as a user runs it (no FLEETKEEPER_* settings from the test's environment)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETKEEPER_")}
    return await asyncio.to_thread(
        subprocess.run,
        fleetkeeper_command(*args),
        input=typed,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )

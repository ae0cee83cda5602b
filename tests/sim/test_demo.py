"""`fleetkeeper demo` (what `make demo` runs): a living fleet on a fresh data directory, the same
fleet again on the second run, and Ctrl-C stopping all of it."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2

ALIVE = "Press Ctrl+C to stop."  # the last line of the demo's welcome
CONSOLE = re.compile(r"console:\s+(\S+)/")


class Demo:
    def __init__(self, data_dir: Path) -> None:
        command = [sys.executable, "-m", "fleetkeeper", "demo", "--data-dir", str(data_dir)]
        command += ["--port", "0", "--device-port", "0", "--interval", "1"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.data_dir = data_dir

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, within: float = 180) -> None:
        deadline = time.monotonic() + within
        while not any(text in line for line in self.output):
            try:
                self.output.append(self.lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in:\n{''.join(self.output)}") from None

    @property
    def console(self) -> str:
        found = [match.group(1) for line in self.output if (match := CONSOLE.search(line))]
        return found[-1]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.reader.join(timeout=10)
            while not self.lines.empty():
                self.output.append(self.lines.get())

    def client(self) -> httpx2.AsyncClient:
        token = (self.data_dir / "demo" / "api-token").read_text().strip()
        return httpx2.AsyncClient(
            base_url=self.console, headers={"authorization": f"Bearer {token}"}, timeout=30
        )


async def until(client: httpx2.AsyncClient, check: Any, within: float = 120) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = await check(client)
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


async def devices(client: httpx2.AsyncClient, status: str) -> list[dict[str, Any]]:
    listed = await client.get("/api/v1/devices", params={"status": status, "limit": 100})
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


async def demo_deployments(client: httpx2.AsyncClient) -> list[dict[str, Any]]:
    """Newest first."""
    listed = await client.get("/api/v1/deployments")
    assert listed.status_code == 200, listed.text
    documents: list[dict[str, Any]] = listed.json()
    return documents


async def demo_deployment(client: httpx2.AsyncClient) -> dict[str, Any]:
    listed = await demo_deployments(client)
    assert len(listed) == 1, listed
    found = await client.get(f"/api/v1/deployments/{listed[0]['id']}")
    document: dict[str, Any] = found.json()
    return document


async def test_the_demo_starts_a_living_fleet_and_reuses_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Demo(data_dir)
    try:
        first.wait_for(ALIVE)
        assert any("one-time password:" in line for line in first.output)
        async with first.client() as client:

            async def enrolled(client: httpx2.AsyncClient) -> bool:
                return (
                    len(await devices(client, "accepted")) == 8 and len(await devices(client, "pending")) == 1
                )

            assert await until(client, enrolled), "\n".join(first.output)
            types = {device["device_type"] for device in await devices(client, "accepted")}
            assert types == {"rpi4", "jetson-nano"}

            async def progressed(client: httpx2.AsyncClient) -> dict[str, Any] | None:
                deployment = await demo_deployment(client)
                phases = deployment["statistics"]["phases"]
                return deployment if phases[1]["counts"].get("success") == 3 else None

            deployment = await until(client, progressed)
            assert deployment, await demo_deployment(client)
            assert deployment["status"] == "active"
            assert deployment["current_phase"] == 2  # waits for an operator to advance it
            assert deployment["statistics"]["phases"][0]["counts"] == {"success": 2}
    finally:
        assert first.stop() == 0, "".join(first.output)
    assert "stopping the demo" in "".join(first.output)
    assert "Traceback" not in "".join(first.output)
    with httpx2.Client() as probe:
        try:
            probe.get(f"{first.console}/healthz", timeout=2)
            raise AssertionError("the server still answers after the demo stopped")
        except httpx2.TransportError:
            pass

    second = Demo(data_dir)
    try:
        second.wait_for(ALIVE)
        assert not any("one-time password:" in line for line in second.output)
        async with second.client() as client:
            assert len(await devices(client, "accepted")) == 8
            assert len(await devices(client, "pending")) == 1
            again = await demo_deployments(client)
            assert [found["id"] for found in again] == [deployment["id"]]
            assert again[0]["status"] == "active"
            # The operator advances it; the last phase's three devices install and it finishes.
            advanced = await client.post(f"/api/v1/deployments/{deployment['id']}/advance")
            assert advanced.status_code == 200, advanced.text

            async def finished(client: httpx2.AsyncClient) -> bool:
                return bool((await demo_deployments(client))[0]["status"] == "finished")

            assert await until(client, finished), await demo_deployments(client)
    finally:
        assert second.stop() == 0, "".join(second.output)

    # Once the fleet runs the last demo release, the next start signs and deploys a newer one.
    third = Demo(data_dir)
    try:
        third.wait_for(ALIVE)
        async with third.client() as client:
            deployments = await demo_deployments(client)
            assert [found["status"] for found in deployments] == ["active", "finished"]
            releases = (await client.get("/api/v1/releases", params={"name": "demo-app"})).json()["items"]
            assert sorted(release["version"] for release in releases) == ["1.0", "1.1"]
            newest = next(release for release in releases if release["version"] == "1.1")
            assert deployments[0]["release_id"] == newest["id"]
            assert newest["release_counter"] == 2
    finally:
        assert third.stop() == 0, "".join(third.output)
    sim_log = (data_dir / "demo" / "sim.log").read_text()
    assert "Traceback" not in sim_log
    assert "enrolled 8" in sim_log.replace("\n", " ")

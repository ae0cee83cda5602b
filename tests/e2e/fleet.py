"""A whole fleet on loopback for end-to-end tests: a real server (subprocess), its trust installed
with offline keys made in the test, releases signed and uploaded, and real agents (subprocesses
of `fleetkeeper-agent`) in temporary directories."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from tuf.api.metadata import Metadata

from fleetkeeper.releases.artifact import create_artifact
from fleetkeeper.releases.keys import init_keys
from fleetkeeper.releases.signing import sign_release
from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json
from tests.conftest import Api, RunningServer, start_server
from tests.helpers.releases import in_days, upload


@dataclass
class Agent:
    """One simulated device: a data directory, a configuration, the files its modules manage."""

    name: str
    root: Path
    fleet: Fleet
    device_id: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "boot_id").write_text("boot-1\n")
        (self.root / "app").mkdir(exist_ok=True)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "agent.toml"

    def installed_file(self, name: str) -> Path:
        return self.root / "app" / name

    def write_config(
        self, *, health: list[list[str]] | None = None, extra_toml: str = "", **install: Any
    ) -> None:
        server = self.fleet.server
        # Healthy unless the installed application says it is broken: how a test makes a release fail.
        check = (
            "import pathlib, sys; "
            f"app = pathlib.Path({str(self.root / 'app' / 'app.bin')!r}); "
            "broken = app.exists() and b'BROKEN' in app.read_bytes(); "
            "print('application self-test: BROKEN' if broken else 'application self-test: ok'); "
            "sys.exit(1 if broken else 0)"
        )
        health = health if health is not None else [[sys.executable, "-c", check]]
        lines = [
            f'data_dir = "{self.data_dir}"',
            "[enrollment]",
            f'server_url = "{server.device_url}"',
            f'ca = "{server.ca_cert}"',
            'device_type = "rpi4"',
            f'serial = "{self.name}"',
            "[trust]",
            f'image_root = "{self.fleet.image_root}"',
            f'director_root = "{self.fleet.director_root}"',
            "[check_in]",
            "interval = 1",
            "jitter = 0",
            "max_backoff = 2",
            "[install]",
            f"health_commands = {json.dumps(health)}",
            "health_timeout = 30",
            f'boot_id_file = "{self.root / "boot_id"}"',
            f'reboot_command = ["{sys.executable}", "-c", "pass"]',
        ]
        for key, value in install.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines += ["[modules.file]", f'directory = "{self.root / "app"}"']
        self.config_path.write_text("\n".join(lines) + "\n" + extra_toml)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fleetkeeper_agent", "--config", str(self.config_path), *args]

    def run_once(self, *, wrapper: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
        """One check-in (`run --once`), synchronously; returns the exit status."""
        command = self.command("run", "--once")
        if wrapper:
            command = [sys.executable, *wrapper, *command[3:]]
        finished = subprocess.run(
            command, capture_output=True, timeout=120, env={**os.environ, **(env or {})}, check=False
        )
        (self.root / "agent.log").open("ab").write(finished.stderr)
        return finished.returncode

    def start(self) -> None:
        log = (self.root / "agent.log").open("ab")
        self.process = subprocess.Popen(self.command("run"), stdout=log, stderr=log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        path = self.root / "agent.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def identity(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.data_dir / "identity.json").read_text())
        return document

    def state(self) -> dict[str, Any]:
        path = self.data_dir / "update.json"
        document: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return document


@dataclass
class Fleet:
    server: RunningServer
    workdir: Path
    api: Api
    keys: Path = field(init=False)
    image_root: Path = field(init=False)
    director_root: Path = field(init=False)
    agents: list[Agent] = field(default_factory=list)
    # Signed in once: the server's sign-in rate limit would refuse a sign-in per request.
    admin: dict[str, str] = field(default_factory=dict)

    async def setup(self) -> None:
        self.keys = self.workdir / "keys"
        init_keys(self.keys, threshold=1, count=1)
        self.admin = admin = await self.api.admin_headers()
        online = await self.api.client.get("/api/v1/repository/online-keys", headers=admin)
        assert online.status_code == 200, online.text
        trust = build_initial_trust(self.keys, online_keys_from_json(online.json()), in_days(365))
        installed = await self.api.client.post(
            "/api/v1/repository/trust",
            json={
                "root": trust.root.to_dict(),
                "targets": trust.targets.to_dict(),
                "director_root": trust.director_root.to_dict(),
            },
            headers=admin,
        )
        assert installed.status_code == 201, installed.text
        self.image_root = self.workdir / "image-root.json"
        self.image_root.write_bytes(trust.root.to_bytes())
        self.director_root = self.workdir / "director-root.json"
        self.director_root.write_bytes(trust.director_root.to_bytes())

    def agent(self, name: str, **config: Any) -> Agent:
        agent = Agent(name, self.workdir / "agents" / name, self)
        agent.write_config(**config)
        self.agents.append(agent)
        return agent

    async def release(
        self,
        name: str,
        version: str,
        payload: bytes,
        *,
        counter: int,
        module: str = "file",
        device_types: tuple[str, ...] = ("rpi4",),
        file_name: str | None = None,
        sbom_path: Path | None = None,
        provides: dict[str, str] | None = None,
    ) -> None:
        directory = self.workdir / "releases" / f"{name}-{version}"
        directory.mkdir(parents=True)
        source = directory / (file_name or f"{name}.bin")
        source.write_bytes(payload)
        artifact = directory / "release.fkr"
        create_artifact(
            artifact,
            name=name,
            version=version,
            release_counter=counter,
            module=module,
            device_types=list(device_types),
            depends={},
            provides=provides or {},
            payload_paths=[source],
            sbom_path=sbom_path,
        )
        admin = self.admin
        current = await self.api.client.get("/api/v1/repository/metadata/targets.json", headers=admin)
        sign_release(artifact, self.keys, Metadata.from_bytes(current.content), in_days(30))
        uploaded = await upload(self.api, admin, artifact)
        assert uploaded.status_code in (200, 201), uploaded.text

    async def accept_pending(self, count: int, within: float = 30) -> list[str]:
        """Accepts enrollments as they arrive until `count` devices are accepted."""
        admin = self.admin
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            listed = await self.api.client.get("/api/v1/devices", params={"status": "pending"}, headers=admin)
            assert listed.status_code == 200, listed.text
            for device in listed.json()["items"]:
                accepted = await self.api.client.post(f"/api/v1/devices/{device['id']}/accept", headers=admin)
                assert accepted.status_code == 200, accepted.text
            every = await self.api.client.get("/api/v1/devices", params={"status": "accepted"}, headers=admin)
            ids = [device["id"] for device in every.json()["items"]]
            if len(ids) >= count:
                return ids
            await asyncio.sleep(0.3)
        raise AssertionError(f"fewer than {count} devices enrolled in {within} s")

    async def deploy(self, name: str, version: str, devices: list[str], **options: Any) -> str:
        admin = self.admin
        created = await self.api.client.post(
            "/api/v1/deployments",
            json={
                "name": f"{name} {version}",
                "release": name,
                "version": version,
                "target": {"devices": devices},
                **options,
            },
            headers=admin,
        )
        assert created.status_code == 201, created.text
        deployment_id: str = created.json()["id"]
        return deployment_id

    async def deployment(self, deployment_id: str) -> dict[str, Any]:
        found = await self.api.client.get(f"/api/v1/deployments/{deployment_id}", headers=self.admin)
        assert found.status_code == 200, found.text
        document: dict[str, Any] = found.json()
        return document

    async def wait_for(self, deployment_id: str, status: str, within: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            document = await self.deployment(deployment_id)
            if document["status"] == status:
                return document
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {agent.name}\n{agent.log()}" for agent in self.agents)
                raise AssertionError(f"deployment is {document}, not {status}\n{logs}")
            await asyncio.sleep(0.5)

    async def device(self, device_id: str) -> dict[str, Any]:
        admin = self.admin
        found = await self.api.client.get(f"/api/v1/devices/{device_id}", headers=admin)
        assert found.status_code == 200, found.text
        document: dict[str, Any] = found.json()
        return document

    async def audit(self, action: str) -> list[dict[str, Any]]:
        found = await self.api.client.get(
            "/api/v1/audit/records", params={"action": action}, headers=self.admin
        )
        assert found.status_code == 200, found.text
        items: list[dict[str, Any]] = found.json()["items"]
        return items

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()


def management_client(server: RunningServer) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=server.management_url, timeout=30)


@asynccontextmanager
async def running_fleet(workdir: Path, env: dict[str, str] | None = None) -> AsyncIterator[Fleet]:
    """A server (SQLite) in `workdir/server` with trust installed; its agents and it stop after."""
    server = start_server(workdir / "server", timeout=120, env=env)
    try:
        async with management_client(server) as client:
            assert server.admin_password
            fleet = Fleet(server, workdir, Api(client, None, server.admin_password))  # type: ignore[arg-type]
            await fleet.setup()
            try:
                yield fleet
            finally:
                fleet.stop()
    finally:
        server.stop()

"""An agent's update flow against a fake deployments server, with the module's steps made to fail or
the agent killed at a given save: what the update-failure tests share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fleetkeeper_agent.cli import main
from fleetkeeper_agent.client import DeviceClient, tls_context
from fleetkeeper_agent.config import AgentConfig
from fleetkeeper_agent.modules import InstallContext
from fleetkeeper_agent.modules.bootloader import SimulatedBootloader
from fleetkeeper_agent.modules.file import FileModule
from fleetkeeper_agent.update_state import UpdateState
from fleetkeeper_agent.updates import UpdateFlow
from tests.agent.fakeserver import FakeCA


class DeploymentsServer:
    """The device API's deployment routes, answered in process: one deployment, until the device
    reports its outcome."""

    def __init__(self, target_path: str) -> None:
        self.target_path = target_path
        self.reports: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("/status"):
            self.reports.append(json.loads(request.content))
            return httpx2.Response(200, json={})
        if path == "/device/v1/whoami":  # the health check's last step: the server is reachable
            return httpx2.Response(200, json={"device_id": "dev_1"})
        if path == "/device/v1/deployments/current" and not self.reports:
            current = {"deployment_id": "dep_1", "target_path": self.target_path, "release_counter": 2}
            return httpx2.Response(200, json=current)
        return httpx2.Response(404, json={"code": "no_deployment", "detail": "nothing to install"})


class NothingListed:
    """The director, once the device has reported: it lists nothing for it."""

    def check(self, highest_installed_counter: int) -> None:
        return None


def announced_install(
    tmp_path: Path,
    module: str,
    settings: dict[str, Any],
    payload_name: str,
    payload: bytes,
    *,
    health_commands: list[list[str]] | None = None,
    on_reboot: Callable[[], object] | None = None,
) -> tuple[UpdateFlow, DeploymentsServer]:
    """Release 2.0 downloaded and its install announced (as an agent killed right after announcing it
    leaves it): the next check-in runs the install. A reboot is a new boot id, then `on_reboot`."""
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    config = AgentConfig(
        data_dir=tmp_path / "agent",
        modules={module: settings},
        boot_id_file=boot_id,
        health_commands=health_commands or [],
    )
    config.data_dir.mkdir()
    server = DeploymentsServer(f"app/2.0/{payload_name}")
    client = DeviceClient(
        "https://devices.test", tls_context(FakeCA.create().pem), transport=httpx2.MockTransport(server)
    )
    checker: Any = NothingListed()

    def reboot() -> None:
        boot_id.write_text("boot-2\n")
        if on_reboot is not None:
            on_reboot()

    flow = UpdateFlow(config, client, checker, reboot=reboot)
    announce(flow, module, payload_name, payload)
    return flow, server


def announce(
    flow: UpdateFlow,
    module: str,
    payload_name: str,
    payload: bytes,
    *,
    version: str = "2.0",
    deployment_id: str = "dep_1",
) -> None:
    """A release downloaded for a deployment, and its install announced in the device's state."""
    target_path = f"app/{version}/{payload_name}"
    hashes = {"sha256": hashlib.sha256(payload).hexdigest()}
    downloaded = flow.payload_path(hashes, target_path)
    downloaded.parent.mkdir(parents=True)
    downloaded.write_bytes(payload)
    counter = int(version.split(".")[0])
    release = {
        "name": "app",
        "version": version,
        "release_counter": counter,
        "module": module,
        "payload": {"path": f"payload/{payload_name}", "length": len(payload), "sha256": hashes["sha256"]},
    }
    UpdateState.load(flow.data_dir).moved(
        "installing",
        deployment_id=deployment_id,
        target_path=target_path,
        length=len(payload),
        hashes=hashes,
        release=release,
        release_counter=counter,
    ).save(flow.data_dir)


def file_install(tmp_path: Path) -> tuple[UpdateFlow, DeploymentsServer]:
    """app.conf 1.0 in /etc, 2.0 about to be installed by the `file` module."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "app.conf").write_bytes(b"release 1.0\n")
    return announced_install(tmp_path, "file", {"directory": str(etc)}, "app.conf", b"release 2.0\n")


NEEDS_ATTENTION = " — the device needs attention"


class Broken:
    """A module's rollback that fails the same way each time it is called, and counts the calls (set on
    the class, it is called unbound: with the context only)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, ctx: InstallContext) -> bool:
        self.calls += 1
        raise self.error


def status(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["--data-dir", str(data_dir), "status"]) == 0
    answer: dict[str, Any] = json.loads(capsys.readouterr().out)
    return answer


OLD_IMAGE = b"rootfs 1.0 " * 1000
NEW_IMAGE = b"rootfs 2.0 " * 3000


class Killed(BaseException):
    """SIGKILL, as far as the files on disk can tell: nothing after it runs, no handler catches it."""


def killed_at_save(monkeypatch: pytest.MonkeyPatch, at: int, when: str) -> list[int]:
    """UpdateState.save killed at its `at`-th call, just before or just after the write; returns the
    calls so far (one item)."""
    saves = [0]
    original = UpdateState.save

    def save(self: UpdateState, data_dir: Path) -> None:
        saves[0] += 1
        if saves[0] == at and when == "before":
            raise Killed
        original(self, data_dir)
        if saves[0] == at and when == "after":
            raise Killed

    monkeypatch.setattr(UpdateState, "save", save)
    return saves


def distinct_reports(server: DeploymentsServer) -> list[tuple[int, str]]:
    """The reports as the server keeps them: a repeat of a sequence number is the same report."""
    return sorted({(report["seq"], report["status"]) for report in server.reports})


def statuses(server: DeploymentsServer) -> list[str]:
    return [report["status"] for report in server.reports]


def rebooted_by(flow: UpdateFlow, command: list[str]) -> UpdateFlow:
    """The same device, whose reboot is the configured command (no test hook)."""
    return UpdateFlow(replace(flow.config, reboot_command=command), flow.client, flow.checker)


def needing_a_reboot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file module installs and asks for a reboot, as rootfs-ab does."""
    real_install = FileModule.install

    def install_for_a_reboot(self: FileModule, ctx: InstallContext) -> bool:
        real_install(self, ctx)
        return True

    monkeypatch.setattr(FileModule, "install", install_for_a_reboot)


def ab_device(tmp_path: Path) -> tuple[SimulatedBootloader, dict[str, Any]]:
    """Slot a runs release 1.0; the rootfs-ab module's settings for the simulated bootloader."""
    (tmp_path / "slot-a").write_bytes(OLD_IMAGE)
    (tmp_path / "slot-b").write_bytes(b"whatever was there before")
    bootloader = SimulatedBootloader(tmp_path / "bootenv.txt", ["a", "b"], cmdline_file=tmp_path / "cmdline")
    bootloader.write({"boot_slot": "a", "upgrade_available": "0", "bootcount": "0"})
    assert bootloader.simulate_boot() == "a"
    settings = {
        "slots": {"a": str(tmp_path / "slot-a"), "b": str(tmp_path / "slot-b")},
        "bootloader": "simulated",
        "simulated_env": str(tmp_path / "bootenv.txt"),
        "cmdline": str(tmp_path / "cmdline"),
    }
    return bootloader, settings

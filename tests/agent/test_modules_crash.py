"""Killed at every step: each method runs in a child process that SIGKILLs itself just before its N-th
filesystem or command step (for N = 1, 2, … until a run completes). The method is then called again,
as the daemon does after a restart, and the end state must be exactly what an uninterrupted run gives:
install → commit ends in the new state, install → rollback in the state before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper_agent.modules import InstallContext, load_module
from fleetkeeper_agent.modules.rootfs_ab import RootfsABModule
from tests.agent.modulekit import Member, build_tar, context, shell_command, snapshot
from tests.agent.test_modules_container import FAKE_ENGINE, containers, write_state

DRIVER = """
import json, os, signal, sys
from pathlib import Path
import fleetkeeper_agent.modules.base as base
from fleetkeeper_agent.modules import InstallContext, load_module

spec = json.loads(sys.argv[1])
steps = 0

def counted(function):
    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == spec["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)
    return step

STEPS = ("replace", "rename", "symlink", "unlink", "rmdir", "mkdir", "link", "write", "fsync", "ftruncate")
for name in STEPS if spec["count_files"] else ():
    setattr(os, name, counted(getattr(os, name)))
import fleetkeeper_agent.modules as modules
run_command = counted(base.run_command)
for module_file in list(sys.modules.values()):
    if module_file.__name__.startswith("fleetkeeper_agent.modules") and hasattr(module_file, "run_command"):
        module_file.run_command = run_command
module = load_module(spec["module"], spec["settings"])
ctx = InstallContext(spec["release"], Path(spec["payload"]), Path(spec["work_dir"]), spec["settings"])
print(json.dumps({"result": getattr(module, spec["method"])(ctx), "steps": steps}))
"""


@dataclass
class Scenario:
    """One module's update: its setup, the state to compare, what happens between install and commit."""

    prepare: Callable[[Path], tuple[str, dict[str, Any], InstallContext]]
    state: Callable[[Path], Any]
    before_commit: Callable[[Path, dict[str, Any]], None] = lambda root, settings: None
    # A module whose state is all in commands (the engine's) is killed before each command only: its
    # file steps are its journal, and a kill after the journal is a kill before the next command.
    count_files: bool = True


def file_scenario(root: Path) -> tuple[str, dict[str, Any], InstallContext]:
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_bytes(b"old\n" * 1000)
    payload = root / "download/app.conf"
    payload.parent.mkdir()
    payload.write_bytes(b"new\n" * 2000)
    settings = {"directory": str(root / "etc"), "mode": 0o600}
    return "file", settings, context(root, payload, "file", settings)


def directory_scenario(root: Path) -> tuple[str, dict[str, Any], InstallContext]:
    (root / "opt/app/bin").mkdir(parents=True)  # a real directory: the longest path, with the move aside
    (root / "opt/app/bin/run").write_text("old")
    payload = build_tar(
        root / "payload.tar",
        [
            Member("bin/", type=tarfile.DIRTYPE, mode=0o755),
            Member("bin/run", b"new", mode=0o755),
            Member("lib/a.so.1", b"lib"),
            Member("lib/a.so", type=tarfile.SYMTYPE, linkname="a.so.1"),
        ],
    )
    settings = {"path": str(root / "opt/app")}
    return "directory", settings, context(root, payload, "directory", settings, version="2.0")


def rootfs_scenario(root: Path) -> tuple[str, dict[str, Any], InstallContext]:
    (root / "slot-a").write_bytes(b"A" * 300_000)
    (root / "slot-b").write_bytes(b"B" * 100)
    settings = {
        "slots": {"a": str(root / "slot-a"), "b": str(root / "slot-b")},
        "bootloader": "simulated",
        "simulated_env": str(root / "env.txt"),
        "cmdline": str(root / "cmdline"),
    }
    module = load_module("rootfs-ab", settings)
    assert isinstance(module, RootfsABModule)
    module.bootloader.write({"boot_slot": "a", "upgrade_available": "0", "bootcount": "0"})
    (root / "cmdline").write_text("fleetkeeper.slot=a\n")
    payload = root / "rootfs.img"
    payload.write_bytes(b"N" * 2_500_000)  # a few write chunks
    return "rootfs-ab", settings, context(root, payload, "rootfs-ab", settings, version="2.0")


def container_scenario(root: Path) -> tuple[str, dict[str, Any], InstallContext]:
    engine = shell_command(root / "bin", "podman", FAKE_ENGINE)
    write_state(root / "bin", {"app": {"running": True, "args": ["app:1.0"]}})
    payload = root / "container.json"
    payload.write_text(json.dumps({"image": "app:2.0", "options": ["--restart=always"]}))
    settings = {"engine": str(engine)}
    return "container", settings, context(root, payload, "container", settings, version="2.0")


def boot_the_new_slot(root: Path, settings: dict[str, Any]) -> None:
    module = load_module("rootfs-ab", settings)
    assert isinstance(module, RootfsABModule)
    module.bootloader.simulate_boot()  # type: ignore[attr-defined]


SCENARIOS = {
    "file": Scenario(file_scenario, lambda root: snapshot(root / "etc")),
    "container": Scenario(
        container_scenario,
        lambda root: containers(root / "bin"),
        count_files=False,
    ),
    "directory": Scenario(directory_scenario, lambda root: snapshot(root / "opt")),
    "rootfs-ab": Scenario(
        rootfs_scenario,
        lambda root: (
            (root / "env.txt").read_text(),
            snapshot(root / "slot-a"),
            (root / "cmdline").read_text(),
        ),
        boot_the_new_slot,
    ),
}


def run_killed(
    scenario: Scenario, name: str, settings: dict[str, Any], ctx: InstallContext, method: str, kill_at: int
) -> bool:
    """Run `method` in a child killed before step `kill_at`; True when killed, False when it finished."""
    spec = {
        "module": name,
        "settings": settings,
        "release": dict(ctx.release),
        "payload": str(ctx.payload),
        "work_dir": str(ctx.work_dir),
        "method": method,
        "kill_at": kill_at,
        "count_files": scenario.count_files,
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if result.returncode == -9:
        return True
    assert result.returncode == 0, result.stderr
    return False


def kill_points(
    tmp_path: Path, scenario: Scenario, killed_method: str, then: list[str]
) -> tuple[int, list[tuple[Any, Any]]]:
    """For every kill point of `killed_method`: a fresh setup, the steps before it done normally, the
    method killed, then `then` called normally. Returns how many kill points there were, and (state, expected)
    pairs."""
    order = ["install", "commit"] if killed_method == "commit" else ["install", "rollback"]
    results = []
    kill_at = 1
    while True:
        root = tmp_path / f"{killed_method}-{'-'.join(then)}-{kill_at}"
        root.mkdir()
        name, settings, ctx = scenario.prepare(root)
        module = load_module(name, settings)
        before = scenario.state(root)
        if killed_method != "install":
            module.install(ctx)
            if killed_method == "commit":
                scenario.before_commit(root, settings)
        if not run_killed(scenario, name, settings, ctx, killed_method, kill_at):
            break
        for method in then:
            if method == "commit":
                scenario.before_commit(root, settings)
            getattr(module, method)(ctx)
        expected = before if order[-1] == "rollback" and "commit" not in then else None
        results.append((scenario.state(root), expected))
        kill_at += 1
    return kill_at - 1, results


def reference_state(tmp_path: Path, scenario: Scenario) -> Any:
    root = tmp_path / "reference"
    root.mkdir()
    name, settings, ctx = scenario.prepare(root)
    module = load_module(name, settings)
    module.install(ctx)
    scenario.before_commit(root, settings)
    module.commit(ctx)
    return scenario.state(root)


@pytest.mark.parametrize("module_name", sorted(SCENARIOS))
def test_install_killed_anywhere_then_install_again_and_commit(tmp_path: Path, module_name: str) -> None:
    scenario = SCENARIOS[module_name]
    committed = reference_state(tmp_path, scenario)
    points, results = kill_points(tmp_path, scenario, "install", ["install", "commit"])
    assert points >= 5
    for state, _ in results:
        assert state == committed


@pytest.mark.parametrize("module_name", sorted(SCENARIOS))
def test_install_killed_anywhere_then_rollback_restores(tmp_path: Path, module_name: str) -> None:
    points, results = kill_points(tmp_path, SCENARIOS[module_name], "install", ["rollback"])
    assert points >= 5
    for state, before in results:
        assert state == before


@pytest.mark.parametrize("module_name", sorted(SCENARIOS))
def test_rollback_killed_anywhere_then_rollback_again_restores(tmp_path: Path, module_name: str) -> None:
    points, results = kill_points(tmp_path, SCENARIOS[module_name], "rollback", ["rollback"])
    assert points >= 1
    for state, before in results:
        assert state == before


@pytest.mark.parametrize("module_name", sorted(SCENARIOS))
def test_commit_killed_anywhere_then_commit_again(tmp_path: Path, module_name: str) -> None:
    scenario = SCENARIOS[module_name]
    committed = reference_state(tmp_path, scenario)
    _points, results = kill_points(tmp_path, scenario, "commit", ["commit"])
    for state, _ in results:
        assert state == committed

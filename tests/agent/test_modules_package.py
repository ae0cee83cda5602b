"""`package`: real .deb files built with dpkg-deb, installed by a fake dpkg on PATH (the real one needs
root) that keeps its package database in a JSON file and reads the .deb with the real dpkg-deb."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext, UpdateModule, load_module
from fleetkeeper_agent.modules.package import PackageModule
from tests.agent.modulekit import context, fake_command

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")

FAKE_DPKG = """
import json, subprocess, sys
from pathlib import Path

state_path = Path(sys.argv[0]).parent / "dpkg-state.json"
state = json.loads(state_path.read_text()) if state_path.exists() else {}
args = [a for a in sys.argv[1:] if not a.startswith("--force-")]
with open(Path(sys.argv[0]).parent / "dpkg-calls.log", "a") as log:
    log.write(" ".join(args) + "\\n")
if args[0] == "--install":
    fields = subprocess.run(["dpkg-deb", "-f", args[1], "Package", "Version", "Depends"],
                            capture_output=True, text=True, check=True).stdout
    control = dict(line.split(": ", 1) for line in fields.splitlines())
    print(f"Selecting previously unselected package {control['Package']}.")
    print(f"Unpacking {control['Package']} ({control['Version']}) ...")
    if "missing-lib" in control.get("Depends", ""):
        print(f"dpkg: dependency problems prevent configuration of {control['Package']}:", file=sys.stderr)
        print(f" {control['Package']} depends on missing-lib; however:", file=sys.stderr)
        print("  Package missing-lib is not installed.", file=sys.stderr)
        state[control["Package"]] = {"status": "iU ", "version": control["Version"]}
        state_path.write_text(json.dumps(state))
        sys.exit(1)
    state[control["Package"]] = {"status": "ii ", "version": control["Version"]}
elif args[0] == "--remove":
    state.pop(args[1], None)
else:
    sys.exit(2)
state_path.write_text(json.dumps(state))
"""

FAKE_DPKG_QUERY = """
import json, sys
from pathlib import Path

state_path = Path(sys.argv[0]).parent / "dpkg-state.json"
state = json.loads(state_path.read_text()) if state_path.exists() else {}
package = sys.argv[-1]
if package not in state:
    print(f"dpkg-query: no packages found matching {package}", file=sys.stderr)
    sys.exit(1)
print(f"{state[package]['status']}\\t{state[package]['version']}", end="")
"""


def build_deb(tmp_path: Path, package: str, version: str, depends: str = "") -> Path:
    out = tmp_path / "debs" / f"{version}-{depends}" / f"{package}.deb"
    if out.exists():
        return out
    root = tmp_path / f"build-{package}-{version}-{depends}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share" / package).mkdir(parents=True)
    (root / "usr/share" / package / "VERSION").write_text(version)
    control = f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: QA <qa@example.com>\n"
    control += f"Depends: {depends}\n" if depends else ""
    control += "Description: a test package\n"
    (root / "DEBIAN/control").write_text(control)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True, capture_output=True
    )
    return out


@pytest.fixture
def dpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "dpkg", FAKE_DPKG)
    fake_command(bin_dir, "dpkg-query", FAKE_DPKG_QUERY)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def installed(dpkg: Path) -> dict[str, Any]:
    state = dpkg / "dpkg-state.json"
    return {name: v["version"] for name, v in json.loads(state.read_text()).items()} if state.exists() else {}


def settings(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "cache_directory": str(tmp_path / "cache"),
        "search_directories": [str(tmp_path / "apt")],
        **extra,
    }


def setup(tmp_path: Path, deb: Path, work: str, **extra: Any) -> tuple[UpdateModule, InstallContext]:
    table = settings(tmp_path, **extra)
    return load_module("package", table), context(tmp_path, deb, "package", table, version="x", work=work)


def test_the_control_fields_come_from_the_real_deb(tmp_path: Path) -> None:
    module = load_module("package", settings(tmp_path))
    assert isinstance(module, PackageModule)
    assert module.read_control(build_deb(tmp_path, "hello-fleet", "1:2.0-3")) == (
        "hello-fleet",
        "1:2.0-3",
        "all",
    )


def test_a_new_package_install_commit_and_rollback(tmp_path: Path, dpkg: Path) -> None:
    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "1.0"), "w1")
    assert module.install(ctx) is False
    assert module.install(ctx) is False
    assert installed(dpkg) == {"hello-fleet": "1.0"}
    assert module.rollback(ctx) is False
    assert module.rollback(ctx) is False
    assert installed(dpkg) == {}

    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "1.0"), "w2")
    module.install(ctx)
    module.commit(ctx)
    module.commit(ctx)
    assert installed(dpkg) == {"hello-fleet": "1.0"}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["hello-fleet_1.0_all.deb"]


def test_an_upgrade_rolls_back_to_the_cached_previous_deb(tmp_path: Path, dpkg: Path) -> None:
    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "1.0"), "w1")
    module.install(ctx)
    module.commit(ctx)
    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "2.0"), "w2")
    module.install(ctx)
    assert installed(dpkg) == {"hello-fleet": "2.0"}
    module.rollback(ctx)
    module.rollback(ctx)
    assert installed(dpkg) == {"hello-fleet": "1.0"}
    last = (dpkg / "dpkg-calls.log").read_text().splitlines()[-1]
    assert last == f"--install {ctx.work_dir / 'previous.deb'}"  # once: the second rollback saw 1.0 in place


def test_the_previous_deb_is_found_in_apts_archive_with_an_epoch(tmp_path: Path, dpkg: Path) -> None:
    old = build_deb(tmp_path, "hello-fleet", "1:1.0")
    (tmp_path / "apt").mkdir()
    shutil.copy(old, tmp_path / "apt" / "hello-fleet_1%3a1.0_all.deb")
    (dpkg / "dpkg-state.json").write_text(json.dumps({"hello-fleet": {"status": "ii ", "version": "1:1.0"}}))
    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "1:2.0"), "w")
    module.install(ctx)
    module.rollback(ctx)
    assert installed(dpkg) == {"hello-fleet": "1:1.0"}


def test_no_cached_previous_deb_means_no_rollback(tmp_path: Path, dpkg: Path) -> None:
    (dpkg / "dpkg-state.json").write_text(json.dumps({"hello-fleet": {"status": "ii ", "version": "0.9"}}))
    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "1.0"), "w1", require_rollback=True)
    with pytest.raises(AgentError, match=r"its \.deb is not cached") as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    assert installed(dpkg) == {"hello-fleet": "0.9"}

    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "1.0"), "w2")
    module.install(ctx)
    with pytest.raises(AgentError, match=r"0\.9 cannot be reinstalled") as caught:
        module.rollback(ctx)
    assert caught.value.code == "rollback_failed"


def test_a_dpkg_failure_carries_its_output_and_rolls_back(tmp_path: Path, dpkg: Path) -> None:
    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "1.0"), "w1")
    module.install(ctx)
    module.commit(ctx)
    module, ctx = setup(tmp_path, build_deb(tmp_path, "hello-fleet", "2.0", depends="missing-lib"), "w2")
    with pytest.raises(AgentError) as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    assert "Package missing-lib is not installed." in caught.value.message
    module.rollback(ctx)
    assert installed(dpkg) == {"hello-fleet": "1.0"}


def test_a_file_that_is_not_a_deb_is_refused(tmp_path: Path, dpkg: Path) -> None:
    payload = tmp_path / "not.deb"
    payload.write_bytes(b"garbage")
    module, ctx = setup(tmp_path, payload, "w")
    with pytest.raises(AgentError) as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    assert installed(dpkg) == {}

"""`container`: against a fake engine on PATH that keeps its containers in a JSON file and records calls."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext, UpdateModule, load_module
from tests.agent.modulekit import context, fake_command

FAKE_ENGINE = """
import json, sys
from pathlib import Path

state_path = Path(sys.argv[0]).parent / "engine-state.json"
state = json.loads(state_path.read_text()) if state_path.exists() else {}
args = sys.argv[1:]
with open(Path(sys.argv[0]).parent / "engine-calls.log", "a") as log:
    log.write(" ".join(args) + "\\n")

def save():
    state_path.write_text(json.dumps(state))

def missing(name):
    print(f"Error: no such container {name}", file=sys.stderr)
    sys.exit(125)

command = args[0]
if command == "container" and args[1] == "inspect":
    name = args[-1]
    if name not in state:
        missing(name)
    print("true" if state[name]["running"] else "false")
elif command == "stop":
    state[args[1]]["running"] = False
elif command == "start":
    state[args[1]]["running"] = True
elif command == "rename":
    if args[2] in state:
        print("Error: name in use", file=sys.stderr)
        sys.exit(125)
    state[args[2]] = state.pop(args[1])
elif command == "rm":
    if args[-1] not in state:
        missing(args[-1])
    del state[args[-1]]
elif command == "pull":
    if "unreachable" in args[1]:
        print("Trying to pull " + args[1] + "...", file=sys.stderr)
        print("Error: initializing source: connection refused", file=sys.stderr)
        sys.exit(125)
elif command == "load":
    print("Getting image source signatures")
    print("Loaded image: localhost/app:2.0")
elif command == "run":
    name = args[args.index("--name") + 1]
    if name in state:
        print("Error: name in use", file=sys.stderr)
        sys.exit(125)
    rest = args[args.index("--name") + 2:]
    state[name] = {"running": True, "args": rest}
else:
    sys.exit(2)
save()
"""


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "podman", FAKE_ENGINE)
    # PATH holds only the fake: a real docker on this machine must not be reached.
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def containers(engine: Path) -> dict[str, Any]:
    state = engine / "engine-state.json"
    return json.loads(state.read_text()) if state.exists() else {}


def calls(engine: Path) -> list[str]:
    return (engine / "engine-calls.log").read_text().splitlines()


def document_setup(
    tmp_path: Path, document: dict[str, Any], work: str = "work"
) -> tuple[UpdateModule, InstallContext]:
    payload = tmp_path / f"{work}-container.json"
    payload.write_text(json.dumps(document))
    return load_module("container", {}), context(tmp_path, payload, "container", {}, version="2.0", work=work)


def existing(engine: Path, **state: Any) -> None:
    (engine / "engine-state.json").write_text(json.dumps(state))


DOCUMENT = {
    "image": "registry.example.com/app:2.0",
    "name": "app",
    "options": ["-p", "8080:80"],
    "command": ["serve"],
}


def test_install_then_commit_replaces_the_container(tmp_path: Path, engine: Path) -> None:
    existing(engine, app={"running": True, "args": ["registry.example.com/app:1.0"]})
    module, ctx = document_setup(tmp_path, DOCUMENT)
    assert module.install(ctx) is False
    assert module.install(ctx) is False
    assert containers(engine) == {
        "app.fk-previous": {"running": False, "args": ["registry.example.com/app:1.0"]},
        "app": {"running": True, "args": ["-p", "8080:80", "registry.example.com/app:2.0", "serve"]},
    }
    module.commit(ctx)
    module.commit(ctx)
    assert list(containers(engine)) == ["app"]
    assert "pull registry.example.com/app:2.0" in calls(engine)


def test_install_then_rollback_restores_the_previous_container(tmp_path: Path, engine: Path) -> None:
    before = {"app": {"running": True, "args": ["registry.example.com/app:1.0"]}}
    existing(engine, **before)
    module, ctx = document_setup(tmp_path, DOCUMENT)
    module.install(ctx)
    assert module.rollback(ctx) is False
    assert module.rollback(ctx) is False
    assert containers(engine) == before


def test_a_stopped_previous_container_stays_stopped_after_rollback(tmp_path: Path, engine: Path) -> None:
    before = {"app": {"running": False, "args": ["old"]}, "other": {"running": True, "args": []}}
    existing(engine, **before)
    module, ctx = document_setup(tmp_path, DOCUMENT)
    module.install(ctx)
    module.rollback(ctx)
    assert containers(engine) == before


def test_a_first_install_rolled_back_leaves_no_container(tmp_path: Path, engine: Path) -> None:
    module, ctx = document_setup(tmp_path, {"image": "app:2.0"})  # name: the release name
    module.install(ctx)
    assert containers(engine) == {"app": {"running": True, "args": ["app:2.0"]}}
    module.rollback(ctx)
    module.rollback(ctx)
    assert containers(engine) == {}


def test_an_image_archive_is_loaded(tmp_path: Path, engine: Path) -> None:
    payload = tmp_path / "image.tar"
    with tarfile.open(payload, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    settings = {"options": ["--restart=always"]}
    module = load_module("container", settings)
    ctx = context(tmp_path, payload, "container", settings, version="2.0")
    module.install(ctx)
    assert f"load --input {payload}" in calls(engine)
    assert containers(engine) == {"app": {"running": True, "args": ["--restart=always", "localhost/app:2.0"]}}


def test_a_failed_pull_carries_the_engine_output(tmp_path: Path, engine: Path) -> None:
    before = {"app": {"running": True, "args": ["old"]}}
    existing(engine, **before)
    module, ctx = document_setup(tmp_path, {"image": "unreachable.example.com/app:2.0"})
    with pytest.raises(AgentError, match="connection refused") as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    module.rollback(ctx)
    assert containers(engine) == before


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"name": "app"}, "names no image"),
        ({"image": "--privileged"}, "names no image"),
        ({"image": "app:2", "name": "../etc"}, "not a valid container name"),
        ({"image": "app:2", "options": "-p 80:80"}, "options is not a list of strings"),
    ],
)
def test_a_bad_document_is_refused_before_any_engine_call(
    tmp_path: Path, engine: Path, document: dict[str, Any], message: str
) -> None:
    module, ctx = document_setup(tmp_path, document)
    with pytest.raises(AgentError, match=message):
        module.install(ctx)
    assert not (engine / "engine-calls.log").exists() or all("inspect" in c for c in calls(engine))


def test_no_engine_is_module_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    module, ctx = document_setup(tmp_path, DOCUMENT)
    with pytest.raises(AgentError) as caught:
        module.install(ctx)
    assert caught.value.code == "module_unavailable"


def test_the_engine_setting_picks_docker(tmp_path: Path, engine: Path) -> None:
    os.rename(engine / "podman", engine / "docker")
    module = load_module("container", {"engine": "docker"})
    payload = tmp_path / "c.json"
    payload.write_text(json.dumps({"image": "app:2.0"}))
    module.install(context(tmp_path, payload, "container", {}, version="2.0"))
    assert "app" in containers(engine)

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
from tests.agent.modulekit import context, shell_command

# Containers are directories of engine-state/: `running` (true|false) and `args` (one per line).
FAKE_ENGINE = r"""
dir=$(dirname "$0")/engine-state
mkdir -p "$dir"
echo "$*" >> "$(dirname "$0")/engine-calls.log"
missing() { echo "Error: no such container $1" >&2; exit 125; }
in_use() { echo "Error: the container name $1 is already in use" >&2; exit 125; }
eval last=\${$#}
case $1 in
  container) [ -d "$dir/$last" ] || missing "$last"; cat "$dir/$last/running" ;;
  stop) echo false > "$dir/$2/running" ;;
  start) echo true > "$dir/$2/running" ;;
  rename) [ -e "$dir/$3" ] && in_use "$3"; mv "$dir/$2" "$dir/$3" ;;
  rm) [ -d "$dir/$last" ] || missing "$last"; rm -r "$dir/$last" ;;
  pull) case $2 in *unreachable*)
          echo "Trying to pull $2..." >&2
          echo "Error: initializing source: connection refused" >&2
          exit 125 ;;
        esac ;;
  load) echo "Getting image source signatures"; echo "Loaded image: localhost/app:2.0" ;;
  run) name=$4; shift 4  # run --detach --name NAME [options] image [command]
       [ -e "$dir/$name" ] && in_use "$name"
       mkdir "$dir/$name"; echo true > "$dir/$name/running"; : > "$dir/$name/args"
       for arg in "$@"; do echo "$arg" >> "$dir/$name/args"; done ;;
  *) exit 2 ;;
esac
"""


def write_state(engine: Path, state: dict[str, Any]) -> None:
    for name, container in state.items():
        (engine / "engine-state" / name).mkdir(parents=True)
        (engine / "engine-state" / name / "running").write_text(
            "true\n" if container["running"] else "false\n"
        )
        (engine / "engine-state" / name / "args").write_text("".join(f"{arg}\n" for arg in container["args"]))


def containers(engine: Path) -> dict[str, Any]:
    folder = engine / "engine-state"
    if not folder.exists():
        return {}
    return {
        path.name: {
            "running": (path / "running").read_text().strip() == "true",
            "args": (path / "args").read_text().splitlines(),
        }
        for path in sorted(folder.iterdir())
    }


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    shell_command(bin_dir, "podman", FAKE_ENGINE)
    # The fake first, then the base tools the fake uses; not /usr/local/bin, where a real docker may be.
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def calls(engine: Path) -> list[str]:
    return (engine / "engine-calls.log").read_text().splitlines()


def document_setup(
    tmp_path: Path, document: dict[str, Any], work: str = "work"
) -> tuple[UpdateModule, InstallContext]:
    payload = tmp_path / f"{work}-container.json"
    payload.write_text(json.dumps(document))
    return load_module("container", {}), context(tmp_path, payload, "container", {}, version="2.0", work=work)


def existing(engine: Path, **state: Any) -> None:
    write_state(engine, state)


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


ENGINE_RM = 'rm) [ -d "$dir/$last" ] || missing "$last"; rm -r "$dir/$last" ;;'


@pytest.mark.parametrize("removed", [True, False], ids=["rm removed it", "rm did not"])
def test_after_a_commit_that_failed_rollback_restores_the_previous_container_only_if_it_is_there(
    tmp_path: Path, engine: Path, removed: bool
) -> None:
    """The flow rolls back an install whose commit keeps failing. If the engine removed the previous
    container and failed all the same (a timeout), there is nothing to go back to: rollback says so
    rather than leave the new container running under a rollback that reported success."""
    before = {"app": {"running": True, "args": ["registry.example.com/app:1.0"]}}
    existing(engine, **before)
    module, ctx = document_setup(tmp_path, DOCUMENT)
    module.install(ctx)
    removal = 'rm -r "$dir/$last"; ' if removed else ""
    failing_rm = (
        f'rm) [ -d "$dir/$last" ] || missing "$last"; {removal}echo "Error: timed out" >&2; exit 125 ;;'
    )
    shell_command(engine, "podman", FAKE_ENGINE.replace(ENGINE_RM, failing_rm))
    with pytest.raises(AgentError) as caught:
        module.commit(ctx)
    assert caught.value.code == "commit_failed"
    shell_command(engine, "podman", FAKE_ENGINE)

    if removed:
        with pytest.raises(AgentError) as caught:
            module.rollback(ctx)
        assert caught.value.code == "rollback_failed"
        assert caught.value.message == (
            "a commit that failed removed the previous container app.fk-previous: the new app stays"
        )
        assert list(containers(engine)) == ["app"]
        assert containers(engine)["app"]["args"][-2:] == ["registry.example.com/app:2.0", "serve"]
    else:
        assert module.rollback(ctx) is False
        assert containers(engine) == before


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
    assert containers(engine) == before  # the image comes first: the old container never stopped
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

"""`file` and `directory`: install → commit, install → rollback back to exactly the previous state,
every method twice, and what the settings refuse."""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import BUILTIN_MODULES, InstallContext, UpdateModule, directory, load_module
from tests.agent.modulekit import Member, build_tar, context, deep_tree, snapshot

# --- file ----------------------------------------------------------------------------------------------


def file_setup(tmp_path: Path, content: bytes = b"new config\n") -> tuple[UpdateModule, InstallContext, Path]:
    target_dir = tmp_path / "etc"
    target_dir.mkdir(exist_ok=True)
    payload = tmp_path / "download" / "app.conf"
    payload.parent.mkdir(exist_ok=True)
    payload.write_bytes(content)
    settings = {"directory": str(target_dir), "mode": "0640"}
    return load_module("file", settings), context(tmp_path, payload, "file", settings), target_dir


def test_file_install_then_commit(tmp_path: Path) -> None:
    module, ctx, target_dir = file_setup(tmp_path)
    (target_dir / "app.conf").write_bytes(b"old\n")
    assert module.install(ctx) is False
    assert module.install(ctx) is False
    assert module.activated(ctx) is True
    module.commit(ctx)
    module.commit(ctx)
    assert snapshot(target_dir)["app.conf"][:2] == ("file", 0o640)
    assert (target_dir / "app.conf").read_bytes() == b"new config\n"


def test_file_rollback_restores_the_previous_file_exactly(tmp_path: Path) -> None:
    module, ctx, target_dir = file_setup(tmp_path)
    (target_dir / "app.conf").write_bytes(b"old\n")
    (target_dir / "app.conf").chmod(0o600)
    (target_dir / "other").write_bytes(b"untouched")
    before = snapshot(target_dir)
    module.install(ctx)
    assert snapshot(target_dir) != before
    assert module.rollback(ctx) is False
    assert module.rollback(ctx) is False
    assert snapshot(target_dir) == before


def test_file_rollback_removes_a_file_that_was_not_there(tmp_path: Path) -> None:
    module, ctx, target_dir = file_setup(tmp_path)
    before = snapshot(target_dir)
    module.install(ctx)
    assert (target_dir / "app.conf").exists()
    module.rollback(ctx)
    module.rollback(ctx)
    assert snapshot(target_dir) == before


def test_file_rollback_before_any_install_changes_nothing(tmp_path: Path) -> None:
    module, ctx, target_dir = file_setup(tmp_path)
    (target_dir / "app.conf").write_bytes(b"old\n")
    before = snapshot(target_dir)
    assert module.rollback(ctx) is False
    assert snapshot(target_dir) == before


def test_file_refuses_to_replace_a_directory_or_a_link(tmp_path: Path) -> None:
    module, ctx, target_dir = file_setup(tmp_path)
    (target_dir / "app.conf").symlink_to("/etc/passwd")
    with pytest.raises(AgentError, match="not a regular file") as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    assert os.readlink(target_dir / "app.conf") == "/etc/passwd"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "directory: expected a non-empty string"),
        ({"directory": "relative/dir"}, "directory: expected an absolute path"),
        ({"directory": "/tmp", "mode": "rw-r--r--"}, "mode: expected a file mode"),
    ],
)
def test_file_settings_are_checked_at_load(settings: dict[str, str], message: str) -> None:
    with pytest.raises(AgentError, match=message) as caught:
        load_module("file", settings)
    assert caught.value.code == "invalid_settings"


# --- directory -----------------------------------------------------------------------------------------


def tree_payload(tmp_path: Path, version: str, content: bytes, folder_name: str = "") -> Path:
    folder = tmp_path / (folder_name or f"download-{version}")
    folder.mkdir()
    return build_tar(
        folder / "payload.tar",
        [
            Member("bin/", type=tarfile.DIRTYPE, mode=0o755),
            Member("bin/app", content, mode=0o755),
            Member("VERSION", version.encode()),
            Member("current-bin", type=tarfile.SYMTYPE, linkname="bin/app"),
        ],
    )


def directory_setup(
    tmp_path: Path, version: str = "2.0", attempt: str = "a"
) -> tuple[UpdateModule, InstallContext, Path]:
    """Each install has its own download and work directory, as the daemon gives it."""
    opt = tmp_path / "opt"
    opt.mkdir(exist_ok=True)
    settings = {"path": str(opt / "app")}
    payload = tree_payload(tmp_path, version, f"app {version}".encode(), f"download-{version}-{attempt}")
    ctx = context(tmp_path, payload, "directory", settings, version=version, work=f"work-{version}-{attempt}")
    return load_module("directory", settings), ctx, opt


def install_first_release(tmp_path: Path) -> None:
    module, ctx, _ = directory_setup(tmp_path, "1.0")
    module.install(ctx)
    module.commit(ctx)


def test_directory_install_flips_the_link_and_commit_drops_the_old_tree(tmp_path: Path) -> None:
    install_first_release(tmp_path)
    module, ctx, opt = directory_setup(tmp_path)
    assert os.readlink(opt / "app") == "app.1.0"
    assert module.install(ctx) is False
    assert module.install(ctx) is False
    assert os.readlink(opt / "app") == "app.2.0"
    assert (opt / "app/VERSION").read_text() == "2.0"
    assert (opt / "app.1.0").is_dir()  # kept for a rollback until commit
    module.commit(ctx)
    module.commit(ctx)
    assert sorted(os.listdir(opt)) == ["app", "app.2.0"]


def test_directory_rollback_restores_the_previous_link_and_tree(tmp_path: Path) -> None:
    install_first_release(tmp_path)
    module, ctx, opt = directory_setup(tmp_path)
    before = snapshot(opt)
    module.install(ctx)
    assert module.rollback(ctx) is False
    assert module.rollback(ctx) is False
    assert snapshot(opt) == before


def test_directory_rollback_refuses_after_a_commit_that_began_removing_the_previous_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon rolls back an install whose commit keeps failing. A commit that failed while removing
    the previous tree may have left part of it: rollback refuses rather than link `path` back to that."""
    install_first_release(tmp_path)
    module, ctx, opt = directory_setup(tmp_path)
    module.install(ctx)
    real_remove_tree = directory.remove_tree

    def fails_halfway(path: Path) -> None:
        if path.name != "app.1.0":
            return real_remove_tree(path)
        (path / "VERSION").unlink()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(directory, "remove_tree", fails_halfway)
    with pytest.raises(AgentError) as caught:
        module.commit(ctx)
    assert caught.value.code == "commit_failed"
    for _ in range(2):
        with pytest.raises(AgentError) as caught:
            module.rollback(ctx)
        assert caught.value.code == "rollback_failed"
        assert caught.value.message == (
            f"the commit began removing the previous tree app.1.0: {opt / 'app'} stays linked to the new "
            "tree app.2.0"
        )
    assert os.readlink(opt / "app") == "app.2.0"

    monkeypatch.undo()
    module.commit(ctx)  # the commit tried again finishes the job
    assert sorted(os.listdir(opt)) == ["app", "app.2.0"]


def test_directory_first_install_over_a_real_directory_and_back(tmp_path: Path) -> None:
    opt = tmp_path / "opt"
    (opt / "app/data").mkdir(parents=True)
    (opt / "app/data/keep.txt").write_text("precious")
    before = snapshot(opt)
    module, ctx, _ = directory_setup(tmp_path)
    module.install(ctx)
    module.install(ctx)
    assert os.readlink(opt / "app") == "app.2.0"
    assert (opt / "app.pre-2.0/data/keep.txt").read_text() == "precious"
    module.rollback(ctx)
    module.rollback(ctx)
    assert snapshot(opt) == before


def test_directory_first_install_over_nothing_and_back(tmp_path: Path) -> None:
    module, ctx, opt = directory_setup(tmp_path)
    module.install(ctx)
    assert (opt / "app/current-bin").read_bytes() == b"app 2.0"
    module.rollback(ctx)
    assert list(opt.iterdir()) == []


def test_the_same_version_again_gets_its_own_tree(tmp_path: Path) -> None:
    install_first_release(tmp_path)
    module, ctx, opt = directory_setup(tmp_path, "1.0", attempt="again")
    module.install(ctx)
    assert os.readlink(opt / "app") == "app.1.0.2"
    module.commit(ctx)
    assert sorted(os.listdir(opt)) == ["app", "app.1.0.2"]


def test_a_hostile_tree_leaves_the_live_one_alone(tmp_path: Path) -> None:
    install_first_release(tmp_path)
    opt = tmp_path / "opt"
    before = snapshot(opt)
    payload = build_tar(tmp_path / "evil.tar", [Member("../../escape", b"x")])
    settings = {"path": str(opt / "app")}
    module = load_module("directory", settings)
    ctx = context(tmp_path, payload, "directory", settings, version="6.6", work="evil-work")
    with pytest.raises(AgentError) as caught:
        module.install(ctx)
    assert caught.value.code == "unsafe_archive"
    assert snapshot(opt) == before
    module.rollback(ctx)
    assert snapshot(opt) == before


def test_rollback_clears_a_partial_tree_of_any_depth(tmp_path: Path) -> None:
    install_first_release(tmp_path)
    module, ctx, opt = directory_setup(tmp_path)
    before = snapshot(opt)
    outside = tmp_path / "outside"
    outside.mkdir()
    module.install(ctx)
    # What an agent without the unpacker's depth limit could leave behind a deep archive.
    with deep_tree(opt / ".app.2.0.partial", 1200, outside):
        module.rollback(ctx)
    assert snapshot(opt) == before
    assert list(outside.iterdir()) == []


def test_the_unpacked_size_limit_comes_from_the_settings(tmp_path: Path) -> None:
    opt = tmp_path / "opt"
    opt.mkdir()
    payload = tree_payload(tmp_path, "2.0", b"x" * 5000)
    settings = {"path": str(opt / "app"), "max_unpacked_bytes": 1000}
    with pytest.raises(AgentError, match="add up to more than 1000 bytes"):
        load_module("directory", settings).install(context(tmp_path, payload, "directory", settings))
    assert list(opt.iterdir()) == []


# --- loading -------------------------------------------------------------------------------------------


def test_every_builtin_module_is_known_by_its_release_name() -> None:
    assert sorted(BUILTIN_MODULES) == ["container", "directory", "file", "package", "rootfs-ab", "script"]


def test_an_unknown_module_has_a_code() -> None:
    for name in ("x-nothing-installed", "tarball"):
        with pytest.raises(AgentError) as caught:
            load_module(name, {})
        assert caught.value.code == "unknown_module"

"""Safe unpacking: a good tree arrives whole; every hostile archive is refused with nothing written."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.unpack import UnpackLimits, unpack_archive
from tests.agent.modulekit import Member, build_tar, snapshot


def test_a_good_tree_is_unpacked_whole(tmp_path: Path) -> None:
    archive = build_tar(
        tmp_path / "payload.tar",
        [
            Member("./", type=tarfile.DIRTYPE, mode=0o755),
            Member("./bin/", type=tarfile.DIRTYPE, mode=0o755),
            Member("./bin/run", b"#!/bin/sh\n", mode=0o4755),  # setuid is dropped
            Member("lib/libx.so.1.2", b"ELF"),
            Member("lib/libx.so.1", type=tarfile.SYMTYPE, linkname="libx.so.1.2"),
            Member("lib/libx.so", type=tarfile.SYMTYPE, linkname="libx.so.1"),  # a link to a link
            Member("share/doc/libx", type=tarfile.SYMTYPE, linkname="../../lib"),
            Member("share/copy", type=tarfile.LNKTYPE, linkname="lib/libx.so.1.2"),
        ],
    )
    parent = tmp_path / "opt"
    parent.mkdir()
    unpack_archive(archive, parent / "app.1", max_archive_bytes=archive.stat().st_size)
    assert sorted(p.name for p in parent.iterdir()) == ["app.1"]
    tree = snapshot(parent / "app.1")
    assert tree["bin/run"][:2] == ("file", 0o755)
    assert tree["lib/libx.so"] == ("link", 0, "libx.so.1")
    assert tree["share/doc/libx"] == ("link", 0, "../../lib")
    assert (parent / "app.1/share/copy").read_bytes() == b"ELF"
    assert (parent / "app.1/lib/libx.so").read_bytes() == b"ELF"


HOSTILE = {
    "dotdot": [Member("../evil", b"x")],
    "dotdot inside": [Member("a/../../evil", b"x")],
    "absolute": [Member("/etc/evil", b"x")],
    "symlink out": [Member("link", type=tarfile.SYMTYPE, linkname="../outside")],
    "symlink deep out": [Member("a/b/link", type=tarfile.SYMTYPE, linkname="../../../outside")],
    "symlink absolute": [Member("etc", type=tarfile.SYMTYPE, linkname="/etc")],
    "symlink through a symlink": [
        Member("a/b/up", type=tarfile.SYMTYPE, linkname="../.."),
        Member("a/b/escape", type=tarfile.SYMTYPE, linkname="up/../.."),
    ],
    "file under a symlink": [
        Member("sub/", type=tarfile.DIRTYPE, mode=0o755),
        Member("d", type=tarfile.SYMTYPE, linkname="sub"),
        Member("d/evil", b"x"),
    ],
    "file under a file": [Member("a", b"x"), Member("a/b", b"y")],
    "hardlink out": [Member("hl", type=tarfile.LNKTYPE, linkname="../../etc/passwd")],
    "hardlink absolute": [Member("hl", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
    "hardlink to nothing": [Member("hl", type=tarfile.LNKTYPE, linkname="missing")],
    "hardlink to a link": [
        Member("f", b"x"),
        Member("s", type=tarfile.SYMTYPE, linkname="f"),
        Member("hl", type=tarfile.LNKTYPE, linkname="s"),
    ],
    "character device": [Member("dev/null", type=tarfile.CHRTYPE)],
    "block device": [Member("dev/sda", type=tarfile.BLKTYPE)],
    "fifo": [Member("pipe", type=tarfile.FIFOTYPE)],
    "duplicate": [Member("a", b"one"), Member("a", b"two")],
    "duplicate spelled differently": [Member("a", b"one"), Member("./a", b"two")],
    "link replacing a parent directory": [
        Member("d/f", b"x"),
        Member("d", type=tarfile.SYMTYPE, linkname="."),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_with_nothing_written(tmp_path: Path, case: str) -> None:
    archive = build_tar(tmp_path / "payload.tar", [Member("ok.txt", b"fine"), *HOSTILE[case]])
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError) as caught:
        unpack_archive(archive, parent / "app.1")
    assert caught.value.code == "unsafe_archive", caught.value
    assert list(parent.iterdir()) == []
    assert not (tmp_path / "outside").exists()


def test_members_larger_than_the_limit_are_refused(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "payload.tar", [Member("a", b"x" * 600), Member("b", b"x" * 600)])
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError, match="add up to more than 1000 bytes") as caught:
        unpack_archive(archive, parent / "app.1", limits=UnpackLimits(max_total_bytes=1000))
    assert caught.value.code == "unsafe_archive"
    assert list(parent.iterdir()) == []


def test_an_archive_larger_than_declared_is_refused(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "payload.tar", [Member("a", b"x")])
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError, match="more than the declared") as caught:
        unpack_archive(archive, parent / "app.1", max_archive_bytes=archive.stat().st_size - 1)
    assert caught.value.code == "unsafe_archive"
    assert list(parent.iterdir()) == []


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "payload.tar", [Member(f"f{i}", b"") for i in range(11)])
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError, match="more than 10 members"):
        unpack_archive(archive, parent / "app.1", limits=UnpackLimits(max_members=10))
    assert list(parent.iterdir()) == []


def test_a_truncated_archive_is_refused(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "payload.tar", [Member("a", b"x" * 5000)])
    archive.write_bytes(archive.read_bytes()[:2048])
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError) as caught:
        unpack_archive(archive, parent / "app.1")
    assert caught.value.code in ("unsafe_archive", "invalid_archive")
    assert list(parent.iterdir()) == []


def test_not_a_tar_is_an_invalid_archive(tmp_path: Path) -> None:
    archive = tmp_path / "payload.tar"
    archive.write_bytes(b"not a tar at all" * 100)
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError) as caught:
        unpack_archive(archive, parent / "app.1")
    assert caught.value.code == "invalid_archive"
    assert list(parent.iterdir()) == []


def test_a_leftover_of_a_crash_is_cleared_and_an_existing_destination_kept(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "payload.tar", [Member("a", b"new")])
    parent = tmp_path / "opt"
    (parent / ".app.1.partial/half").mkdir(parents=True)
    unpack_archive(archive, parent / "app.1")
    assert sorted(os.listdir(parent)) == ["app.1"]
    with pytest.raises(AgentError, match="already exists"):
        unpack_archive(archive, parent / "app.1")
    assert (parent / "app.1/a").read_bytes() == b"new"

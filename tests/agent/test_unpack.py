"""Safe unpacking: a good tree arrives whole; every hostile archive is refused with nothing written."""

from __future__ import annotations

import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.unpack import LINK_STEPS_PER_MEMBER, MAX_DEPTH, UnpackLimits, unpack_archive
from tests.agent.modulekit import Member, build_tar, deep_tree, snapshot


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


# --- archives made to exhaust the unpacker ------------------------------------------------------


def test_a_deep_member_name_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    # 20 KB of name: holding every prefix of it as its own string would take about 100 MB.
    archive = build_tar(tmp_path / "payload.tar", [Member("a/" * 10_000 + "f", b"x")])
    parent = tmp_path / "opt"
    parent.mkdir()
    tracemalloc.start()
    try:
        with pytest.raises(AgentError) as caught:
            unpack_archive(archive, parent / "app.1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "unsafe_archive", caught.value
    assert "characters" in caught.value.message
    assert len(caught.value.message) < 500  # the name is shown cut short
    assert peak < 16 * 1024**2
    assert list(parent.iterdir()) == []


def test_a_tree_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    # Each level is its own member: no single name is long, the tree is 1,200 directories deep.
    levels = [Member("a/" * depth, type=tarfile.DIRTYPE, mode=0o755) for depth in range(1, 1201)]
    archive = build_tar(tmp_path / "payload.tar", levels)
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError, match="levels deep") as caught:
        unpack_archive(archive, parent / "app.1")
    assert caught.value.code == "unsafe_archive"
    assert list(parent.iterdir()) == []


def test_a_link_target_longer_than_a_path_is_refused(tmp_path: Path) -> None:
    archive = build_tar(
        tmp_path / "payload.tar", [Member("link", type=tarfile.SYMTYPE, linkname="a/" * 5_000 + "f")]
    )
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError, match="characters") as caught:
        unpack_archive(archive, parent / "app.1")
    assert caught.value.code == "unsafe_archive"
    assert list(parent.iterdir()) == []


def test_every_member_counts_towards_the_limit_also_the_root_and_implied_directories(tmp_path: Path) -> None:
    parent = tmp_path / "opt"
    parent.mkdir()
    roots = build_tar(tmp_path / "roots.tar", [Member("./", type=tarfile.DIRTYPE, mode=0o755)] * 11)
    with pytest.raises(AgentError, match="more than 10 members") as caught:
        unpack_archive(roots, parent / "app.1", limits=UnpackLimits(max_members=10))
    assert caught.value.code == "unsafe_archive"
    # Five files, each under three directories of its own that the archive never lists.
    implied = build_tar(tmp_path / "implied.tar", [Member(f"d{i}/e/f/file", b"x") for i in range(5)])
    with pytest.raises(AgentError, match="more than 10 members") as caught:
        unpack_archive(implied, parent / "app.1", limits=UnpackLimits(max_members=10))
    assert caught.value.code == "unsafe_archive"
    assert list(parent.iterdir()) == []
    unpack_archive(implied, parent / "app.1", limits=UnpackLimits(max_members=20))
    assert (parent / "app.1/d4/e/f/file").read_bytes() == b"x"


def test_a_leftover_deeper_than_any_recursion_is_cleared_without_following_its_links(tmp_path: Path) -> None:
    # What an agent without the depth limit left after a deep archive broke its unpacking.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the tree's")
    parent = tmp_path / "opt"
    archive = build_tar(tmp_path / "payload.tar", [Member("a", b"new")])
    with deep_tree(parent / ".app.1.partial", 1200, outside):
        unpack_archive(archive, parent / "app.1")
    assert sorted(os.listdir(parent)) == ["app.1"]
    assert os.listdir(outside) == ["keep.txt"]


# --- symbolic-link targets made to exhaust the resolution ---------------------------------------


def test_thousands_of_links_with_long_targets_are_refused_at_the_first(tmp_path: Path) -> None:
    # The attacker's archive: 3,000 links whose targets (4,000 characters, under the length limit) are
    # 2,000 components each. Unpacked, tarfile's filter resolved each one on the disk (48 s at 45 MB).
    links = [Member(f"l{i}", type=tarfile.SYMTYPE, linkname="a/" * 2_000) for i in range(3_000)]
    archive = build_tar(tmp_path / "payload.tar", [Member("ok.txt", b"fine"), *links])
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError) as caught:
        unpack_archive(archive, parent / "app.1")
    assert caught.value.code == "unsafe_archive", caught.value
    # Refused at the first link, before any other is walked, naming the limit.
    assert caught.value.message.startswith("symbolic link 'l0' -> "), caught.value
    assert f"2000 components ('..' included), more than {MAX_DEPTH}" in caught.value.message
    assert len(caught.value.message) < 500  # the target is shown cut short
    assert list(parent.iterdir()) == []


def _ordinary_tree(packages: int) -> list[Member]:
    """A tree as real ones are: shared libraries with their version links, commands linked into bin/,
    documentation linked into share/doc/; every directory listed."""
    directory = tarfile.DIRTYPE
    members = [Member(name, type=directory, mode=0o755) for name in ("bin/", "lib/", "share/", "share/doc/")]
    for i in range(packages):
        members += [
            Member(f"lib/libpkg{i}.so.1.0", b"ELF"),
            Member(f"lib/libpkg{i}.so.1", type=tarfile.SYMTYPE, linkname=f"libpkg{i}.so.1.0"),
            Member(f"lib/libpkg{i}.so", type=tarfile.SYMTYPE, linkname=f"./libpkg{i}.so.1"),
            Member(f"lib/pkg{i}/", type=directory, mode=0o755),
            Member(f"lib/pkg{i}/bin/", type=directory, mode=0o755),
            Member(f"lib/pkg{i}/bin/tool", b"#!/bin/sh\n", mode=0o755),
            Member(f"lib/pkg{i}/doc/", type=directory, mode=0o755),
            Member(f"lib/pkg{i}/doc/README", b"read me"),
            Member(f"bin/tool{i}", type=tarfile.SYMTYPE, linkname=f"../lib/pkg{i}/bin/tool"),
            Member(f"share/doc/pkg{i}", type=tarfile.SYMTYPE, linkname=f"../../lib/pkg{i}/doc"),
        ]
    return members


def test_a_tree_with_hundreds_of_ordinary_links_is_unpacked_even_at_a_tight_member_limit(
    tmp_path: Path,
) -> None:
    members = _ordinary_tree(100)  # 400 links
    archive = build_tar(tmp_path / "payload.tar", members)
    parent = tmp_path / "opt"
    parent.mkdir()
    unpack_archive(archive, parent / "app.1", limits=UnpackLimits(max_members=len(members)))
    unpack_archive(archive, parent / "app.2")
    for tree in (parent / "app.1", parent / "app.2"):
        assert (tree / "lib/libpkg99.so").read_bytes() == b"ELF"
        assert (tree / "bin/tool42").read_bytes() == b"#!/bin/sh\n"
        assert (tree / "share/doc/pkg7/README").read_bytes() == b"read me"
        assert sum(path.is_symlink() for path in tree.rglob("*")) == 400


LINK_AT_THE_DEPTH_LIMIT = {
    # name of the link, its target: MAX_DEPTH components once '.' and empty ones are dropped
    "down": ("link", "a/" * (MAX_DEPTH - 1) + "f"),
    "down, with '.' and '//'": ("link", "./" * 50 + "a//" * (MAX_DEPTH - 1) + "f"),
    "up from the deepest name": ("d/" * (MAX_DEPTH - 1) + "link", "../" * (MAX_DEPTH - 1) + "ok.txt"),
    "up and down": ("d/d/link", "../../" + "a/" * (MAX_DEPTH - 3) + "f"),
}
LINK_ONE_STEP_PAST_THE_DEPTH_LIMIT = {
    "down": ("link", "a/" * MAX_DEPTH + "f"),
    "up from the deepest name": ("d/" * (MAX_DEPTH - 1) + "link", "../" * (MAX_DEPTH - 1) + "d/ok.txt"),
    "up and down": ("d/d/link", "../../" + "a/" * (MAX_DEPTH - 2) + "f"),
    # '..' steps count even where they undo the step before: the walk is as long as the target.
    "there and back": ("link", "d/../" * ((MAX_DEPTH + 1) // 2) + "ok.txt"),
}


@pytest.mark.parametrize("case", sorted(LINK_AT_THE_DEPTH_LIMIT))
def test_a_link_target_at_the_depth_limit_is_unpacked(tmp_path: Path, case: str) -> None:
    name, target = LINK_AT_THE_DEPTH_LIMIT[case]
    archive = build_tar(
        tmp_path / "payload.tar",
        [Member("ok.txt", b"fine"), Member(name, type=tarfile.SYMTYPE, linkname=target)],
    )
    parent = tmp_path / "opt"
    parent.mkdir()
    unpack_archive(archive, parent / "app.1")
    assert os.readlink(parent / "app.1" / name) == target


@pytest.mark.parametrize("case", sorted(LINK_ONE_STEP_PAST_THE_DEPTH_LIMIT))
def test_a_link_target_one_step_past_the_depth_limit_is_refused(tmp_path: Path, case: str) -> None:
    name, target = LINK_ONE_STEP_PAST_THE_DEPTH_LIMIT[case]
    archive = build_tar(
        tmp_path / "payload.tar",
        [Member("ok.txt", b"fine"), Member(name, type=tarfile.SYMTYPE, linkname=target)],
    )
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError) as caught:
        unpack_archive(archive, parent / "app.1")
    assert caught.value.code == "unsafe_archive", caught.value
    assert f"more than {MAX_DEPTH}" in caught.value.message, caught.value
    assert list(parent.iterdir()) == []


def _links_walking(steps: list[int]) -> list[Member]:
    """Links at the top of the tree whose targets are `steps[i]` components each: resolving link i
    walks exactly `steps[i]` components (its directory is the root)."""
    return [
        Member(f"l{i}", type=tarfile.SYMTYPE, linkname="a/" * (count - 1) + "f")
        for i, count in enumerate(steps)
    ]


def test_the_links_together_walk_at_most_a_budget_proportional_to_the_member_limit(tmp_path: Path) -> None:
    limits = UnpackLimits(max_members=100)
    budget = limits.max_members * LINK_STEPS_PER_MEMBER
    full, rest = divmod(budget, MAX_DEPTH)
    steps = [MAX_DEPTH] * full + ([rest] if rest else [])
    parent = tmp_path / "opt"
    parent.mkdir()
    at_the_budget = build_tar(tmp_path / "at.tar", _links_walking(steps))
    unpack_archive(at_the_budget, parent / "app.1", limits=limits)
    assert len(os.listdir(parent / "app.1")) == len(steps)
    # One component more, in a link whose own target is well under the depth limit.
    past_the_budget = build_tar(tmp_path / "past.tar", _links_walking([*steps, 1]))
    with pytest.raises(AgentError) as caught:
        unpack_archive(past_the_budget, parent / "app.2", limits=limits)
    assert caught.value.code == "unsafe_archive", caught.value
    assert f"more than {budget} components" in caught.value.message, caught.value
    assert f"l{len(steps)}" in caught.value.message  # the link that went past it
    assert sorted(os.listdir(parent)) == ["app.1"]


def test_the_directories_links_stand_in_count_towards_the_budget(tmp_path: Path) -> None:
    # Resolving a link starts from its own directory: a deep link walks down to it first, so links of
    # one-component targets deep in the tree spend the budget too.
    limits = UnpackLimits(max_members=1_000)
    budget = limits.max_members * LINK_STEPS_PER_MEMBER
    depth = MAX_DEPTH - 1  # directories above each link
    count = budget // (depth + 1) + 1  # links of depth + 1 components each: one more than fits
    assert depth + count <= limits.max_members  # refused for the budget, not for the member count
    links = [Member("d/" * depth + f"l{i}", type=tarfile.SYMTYPE, linkname="f") for i in range(count)]
    archive = build_tar(tmp_path / "payload.tar", links)
    parent = tmp_path / "opt"
    parent.mkdir()
    with pytest.raises(AgentError, match=f"more than {budget} components") as caught:
        unpack_archive(archive, parent / "app.1", limits=limits)
    assert caught.value.code == "unsafe_archive"
    assert list(parent.iterdir()) == []
    unpack_archive(build_tar(tmp_path / "fits.tar", links[:-1]), parent / "app.1", limits=limits)

"""Unpacking a tar archive that may be hostile: every member is checked before anything is written.

The payload's hash was checked against signed metadata, so an archive is hostile only if a release key
signed it; this is the second wall, the one that holds if that ever happens (a build machine
compromised, a third-party tree packed without looking). The rules (docs/update-modules.md):

- only regular files, directories, symbolic links and hard links; no devices, FIFOs, sparse or
  other special members;
- names are relative, without `..`, at most `MAX_NAME_LENGTH` characters and `MAX_DEPTH` levels, and
  each appears once (`./a` and `a` are the same name);
- a symbolic link's target is relative, at most `MAX_DEPTH` components (`..` steps included), and
  stays inside the tree when resolved from the link's own directory, and it does not walk through
  another link (a lexical check cannot follow links, so a path through one is refused rather than
  guessed); no member is placed under a link; resolving all the links walks at most
  `LINK_STEPS_PER_MEMBER` components per member `max_members` allows;
- a hard link names a regular file that came earlier in the archive;
- the archive is no larger than declared (the signed payload length), holds at most `max_members`
  members (every header counts, and so does each directory a name implies without a member of its
  own), and its regular files add up to at most `max_total_bytes`.

The check costs time and memory in proportion to the archive (names and link targets are walked
component by component through a tree of the members, never cut into every prefix), and nothing
here recurses over the tree's depth: a hostile archive is refused with an `unsafe_archive`, never a
MemoryError or a RecursionError. Extracting costs more per link than checking (tarfile's filter
resolves each target on the disk, one system call per component, each from the root), which is
why link targets are bounded in components, not only in characters, and all of them together too.

The tree is extracted into a temporary directory beside the destination and renamed into place last, so
a refusal or a crash never leaves a partial tree under the final name. tarfile's "data" filter is
applied as well, for what it adds (no setuid bits, no owners from the archive), not relied upon.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import fsync_directory, remove_tree

DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3
DEFAULT_MAX_MEMBERS = 100_000
MAX_NAME_LENGTH = 4096  # characters of a member's name or link target: Linux's PATH_MAX
# Levels of a member's name, and components of a link's target. Real trees stay far below it; it keeps
# what the standard library does per level (os.makedirs, os.path.realpath while extracting) far from
# the recursion limit and its cost per member small.
MAX_DEPTH = 128
# Components that resolving every link may walk (each from the root to its directory, then its target),
# per member the limit allows. An ordinary link walks 2 to 10 and links are a fraction of a tree, under
# one per member; at the default limit, links MAX_DEPTH deep are refused after about 6,250 of them.
LINK_STEPS_PER_MEMBER = 8
_SHOWN = 80  # characters of a refused name quoted in the error
_ALLOWED_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE}
_TYPE_NAMES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


@dataclass(frozen=True)
class UnpackLimits:
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS


def _unsafe(detail: str) -> AgentError:
    return AgentError("unsafe_archive", detail)


def _shown(name: str) -> str:
    return repr(name) if len(name) <= _SHOWN else repr(name[:_SHOWN]) + "…"


def _name_parts(raw: str) -> list[str]:
    """The member's name as components, without `.` ones; `[]` for the root itself."""
    if len(raw) > MAX_NAME_LENGTH:
        raise _unsafe(
            f"member {_shown(raw)} has a name of {len(raw)} characters, more than {MAX_NAME_LENGTH}"
        )
    if raw.startswith("/"):
        raise _unsafe(f"member {raw!r} has an absolute path")
    if "\x00" in raw or "\\" in raw:
        raise _unsafe(f"member {raw!r} has a NUL or a backslash in its name")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(f"member {raw!r} has a '..' component")
    if len(parts) > MAX_DEPTH:
        raise _unsafe(f"member {_shown(raw)} is {len(parts)} levels deep, more than {MAX_DEPTH}")
    return parts


class _Entry:
    """One name of the tree being checked: what the archive made it, and the names below it."""

    __slots__ = ("children", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # dir, implicit (a parent tar will make), file, symlink, hardlink
        self.children: dict[str, _Entry] = {}


class _Tree:
    """The members seen so far, as a tree of names, counted against `max_members`."""

    def __init__(self, max_members: int) -> None:
        self.root = _Entry("dir")
        self.max_members = max_members
        self.count = 0

    def counted(self) -> None:
        self.count += 1
        if self.count > self.max_members:
            raise _unsafe(f"more than {self.max_members} members, counting the directories names imply")

    def parent_of(self, parts: list[str]) -> _Entry:
        """The directory `parts` goes in, made implicit where the archive did not list it."""
        entry = self.root
        for depth, part in enumerate(parts[:-1], start=1):
            child = entry.children.get(part)
            if child is None:
                self.counted()
                child = entry.children[part] = _Entry("implicit")
            elif child.kind not in ("dir", "implicit"):
                under = "/".join(parts[:depth])
                raise _unsafe(
                    f"member {'/'.join(parts)!r} is placed under {under!r}, which is not a directory"
                )
            entry = child
        return entry

    def find(self, parts: list[str]) -> _Entry | None:
        entry: _Entry | None = self.root
        for part in parts:
            entry = _child(entry, part)
        return entry


def _child(entry: _Entry | None, name: str) -> _Entry | None:
    return entry.children.get(name) if entry is not None else None


def check_members(tar: tarfile.TarFile, *, archive_size: int, limits: UnpackLimits) -> list[tarfile.TarInfo]:
    """Every member of `tar`, checked against the rules above; raises `unsafe_archive` at the first breach."""
    tree = _Tree(limits.max_members)
    symlinks: list[tuple[list[str], str, list[str]]] = []
    link_budget = limits.max_members * LINK_STEPS_PER_MEMBER
    link_steps = 0
    members: list[tarfile.TarInfo] = []
    total = 0
    for info in tar:
        tree.counted()
        parts = _name_parts(info.name)
        if info.type not in _ALLOWED_TYPES:
            what = _TYPE_NAMES.get(info.type, f"of tar type {info.type!r}")
            raise _unsafe(f"member {info.name!r} is {what}")
        if not parts:
            if not info.isdir():
                raise _unsafe(f"member {info.name!r} names the tree's root but is not a directory")
            continue  # "./": the destination itself
        name = "/".join(parts)
        parent = tree.parent_of(parts)
        existing = parent.children.get(parts[-1])
        if existing is not None and not (existing.kind == "implicit" and info.isdir()):
            raise _unsafe(f"member {name!r} appears twice")
        if info.issym():
            steps = _target_parts(name, info.linkname)
            link_steps += len(parts) - 1 + len(steps)
            if link_steps > link_budget:
                raise _unsafe(
                    f"symbolic link {_shown(name)}: resolving the archive's links walks more than "
                    f"{link_budget} components ({LINK_STEPS_PER_MEMBER} per member of the limit of "
                    f"{limits.max_members})"
                )
            _check_symlink(tree, parts, info.linkname, steps)
            kind = "symlink"
            symlinks.append((parts, info.linkname, steps))
        elif info.islnk():
            linked = tree.find(_name_parts(info.linkname))
            if linked is None or linked.kind != "file":
                raise _unsafe(f"hard link {name!r} -> {info.linkname!r} names no earlier regular file")
            kind = "hardlink"
        elif info.isdir():
            kind = "dir"
        else:
            if info.size < 0 or info.offset_data + info.size > archive_size:
                raise _unsafe(f"member {name!r} extends past the end of the archive")
            total += info.size
            if total > limits.max_total_bytes:
                raise _unsafe(f"the members add up to more than {limits.max_total_bytes} bytes")
            kind = "file"
        if existing is None:
            parent.children[parts[-1]] = _Entry(kind)
        else:
            existing.kind = kind  # an implicit directory listed at last; its children stay
        members.append(info)
    # A link that came first may point through a directory entry that came later: check again at the end.
    for parts, target, steps in symlinks:
        _check_symlink(tree, parts, target, steps)
    return members


def _target_parts(name: str, target: str) -> list[str]:
    """The link's target as the components its resolution walks: without `.` ones, `..` included."""
    if not target or target.startswith("/"):
        raise _unsafe(f"symbolic link {_shown(name)} -> {_shown(target)} is absolute or empty")
    if len(target) > MAX_NAME_LENGTH:
        raise _unsafe(
            f"symbolic link {_shown(name)} -> {_shown(target)} has a target of {len(target)} characters, "
            f"more than {MAX_NAME_LENGTH}"
        )
    steps = [part for part in target.split("/") if part not in ("", ".")]
    if len(steps) > MAX_DEPTH:
        raise _unsafe(
            f"symbolic link {_shown(name)} -> {_shown(target)} has a target of {len(steps)} components "
            f"('..' included), more than {MAX_DEPTH}"
        )
    return steps


def _check_symlink(tree: _Tree, parts: list[str], target: str, steps: list[str]) -> None:
    """The link's target, resolved from the link's directory one component at a time, must stay inside
    the tree and not walk through another link: lexically `link/..` is the link's directory, really
    it is the parent of where the link points, so a path through a link is refused rather than
    guessed. Pointing *at* a link (lib.so -> lib.so.1) is fine. Each step costs the same (a stack of
    where the walk stands, `..` pops it): the walk is linear in the link's depth and its target."""
    name = "/".join(parts)
    # Where the resolution stands: the names from the root down and their entries (None for a name
    # the tree does not hold, yet).
    names = parts[:-1]
    entries: list[_Entry | None] = [tree.root]
    for part in names:
        entries.append(_child(entries[-1], part))
    for part in steps:
        reached = entries[-1]
        if reached is not None and reached.kind == "symlink":
            through = "/".join(names)
            raise _unsafe(f"symbolic link {name!r} -> {target!r} goes through the link {through!r}")
        if part == "..":
            if not names:
                raise _unsafe(f"symbolic link {name!r} -> {target!r} leaves the tree")
            names.pop()
            entries.pop()
        else:
            names.append(part)
            entries.append(_child(entries[-1], part))


def unpack_archive(
    archive: Path,
    destination: Path,
    *,
    max_archive_bytes: int | None = None,
    limits: UnpackLimits | None = None,
) -> None:
    """Extract the plain (uncompressed) tar `archive` as the new directory `destination`.

    `destination` must not exist. Safe to call again after a crash: a leftover temporary tree is
    removed first. On any refusal nothing is left beside `destination`.
    """
    limits = limits or UnpackLimits()
    if destination.exists() or destination.is_symlink():
        raise AgentError("install_failed", f"{destination} already exists")
    try:
        archive_size = archive.stat().st_size
    except OSError as exc:
        raise AgentError("install_failed", f"cannot read the archive {archive}: {exc}") from exc
    if max_archive_bytes is not None and archive_size > max_archive_bytes:
        raise _unsafe(f"the archive is {archive_size} bytes, more than the declared {max_archive_bytes}")
    partial = destination.with_name(f".{destination.name}.partial")
    remove_tree(partial)
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = check_members(tar, archive_size=archive_size, limits=limits)
            partial.mkdir(mode=0o755)
            tar.extractall(partial, members=members, filter="data")
        _fsync_tree(partial)
        os.rename(partial, destination)
    except tarfile.TarError as exc:
        remove_tree(partial)
        raise AgentError("invalid_archive", f"{archive.name} is not a readable tar archive: {exc}") from exc
    except BaseException:
        remove_tree(partial)
        raise
    fsync_directory(destination.parent)


def _fsync_tree(root: Path) -> None:
    """The tree must be on disk before its name is: after a power cut the name means a whole tree."""
    pending = [root]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        fsync_directory(directory)

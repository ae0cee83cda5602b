"""Unpacking a tar archive that may be hostile: every member is checked before anything is written.

The payload's hash was checked against signed metadata, so an archive is hostile only if a release key
signed it; this is the second wall, the one that holds if that ever happens (a build machine
compromised, a third-party tree packed without looking). The rules (docs/update-modules.md):

- only regular files, directories, symbolic links and hard links; no devices, FIFOs, sparse or
  other special members;
- names are relative, without `..`, and each appears once (`./a` and `a` are the same name);
- a symbolic link's target is relative and stays inside the tree when resolved from the link's own
  directory, and it does not walk through another link (a lexical check cannot follow links, so a
  path through one is refused rather than guessed); no member is placed under a link;
- a hard link names a regular file that came earlier in the archive;
- the archive is no larger than declared (the signed payload length), holds at most `max_members`
  members, and its regular files add up to at most `max_total_bytes`.

The tree is extracted into a temporary directory beside the destination and renamed into place last, so
a refusal or a crash never leaves a partial tree under the final name. tarfile's "data" filter is
applied as well, for what it adds (no setuid bits, no owners from the archive), not relied upon.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import fsync_directory

DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3
DEFAULT_MAX_MEMBERS = 100_000
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


def _normal_name(raw: str) -> str:
    """The member's name as a relative POSIX path without `.` segments; `` for the root itself."""
    if raw.startswith("/"):
        raise _unsafe(f"member {raw!r} has an absolute path")
    if "\x00" in raw or "\\" in raw:
        raise _unsafe(f"member {raw!r} has a NUL or a backslash in its name")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(f"member {raw!r} has a '..' component")
    return "/".join(parts)


def _resolve_inside(base: str, target: str) -> list[str] | None:
    """The components of `target` resolved lexically from directory `base`; None when it leaves the tree."""
    parts = base.split("/") if base else []
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return parts


def check_members(tar: tarfile.TarFile, *, archive_size: int, limits: UnpackLimits) -> list[tarfile.TarInfo]:
    """Every member of `tar`, checked against the rules above; raises `unsafe_archive` at the first breach."""
    kinds: dict[str, str] = {}  # normalized name -> file, dir, implicit (a parent), symlink, hardlink
    symlinks: dict[str, str] = {}
    members: list[tarfile.TarInfo] = []
    total = 0
    for info in tar:
        if len(members) >= limits.max_members:
            raise _unsafe(f"more than {limits.max_members} members")
        name = _normal_name(info.name)
        if info.type not in _ALLOWED_TYPES:
            what = _TYPE_NAMES.get(info.type, f"of tar type {info.type!r}")
            raise _unsafe(f"member {info.name!r} is {what}")
        if not name:
            if not info.isdir():
                raise _unsafe(f"member {info.name!r} names the tree's root but is not a directory")
            continue  # "./": the destination itself
        if name in kinds and not (kinds[name] == "implicit" and info.isdir()):
            raise _unsafe(f"member {name!r} appears twice")
        parents = name.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            prefix = "/".join(parents[:depth])
            kind = kinds.setdefault(prefix, "implicit")  # a directory tar will make for the member
            if kind not in ("dir", "implicit"):
                raise _unsafe(f"member {name!r} is placed under {prefix!r}, which is not a directory")
        if info.issym():
            _check_symlink(name, info.linkname, kinds)
            kinds[name] = "symlink"
            symlinks[name] = info.linkname
        elif info.islnk():
            target = _normal_name(info.linkname)
            if kinds.get(target) != "file":
                raise _unsafe(f"hard link {name!r} -> {info.linkname!r} names no earlier regular file")
            kinds[name] = "hardlink"
        elif info.isdir():
            kinds[name] = "dir"
        else:
            if info.size < 0 or info.offset_data + info.size > archive_size:
                raise _unsafe(f"member {name!r} extends past the end of the archive")
            total += info.size
            if total > limits.max_total_bytes:
                raise _unsafe(f"the members add up to more than {limits.max_total_bytes} bytes")
            kinds[name] = "file"
        members.append(info)
    # A link that came first may point through a directory entry that came later: check again at the end.
    for name, target in symlinks.items():
        _check_symlink(name, target, kinds)
    return members


def _check_symlink(name: str, target: str, kinds: dict[str, str]) -> None:
    if not target or target.startswith("/"):
        raise _unsafe(f"symbolic link {name!r} -> {target!r} is absolute or empty")
    resolved = _resolve_inside(posixpath.dirname(name), target)
    if resolved is None:
        raise _unsafe(f"symbolic link {name!r} -> {target!r} leaves the tree")
    # Lexically `link/..` is the link's directory; really it is the parent of where the link points.
    # Walking through a link is therefore refused; pointing *at* one (lib.so -> lib.so.1) is fine.
    walked = _walk_components(posixpath.dirname(name), target)
    for prefix in walked[:-1]:
        if kinds.get(prefix) == "symlink":
            raise _unsafe(f"symbolic link {name!r} -> {target!r} goes through the link {prefix!r}")


def _walk_components(base: str, target: str) -> list[str]:
    """Every intermediate path the lexical resolution of `target` from `base` passes through."""
    parts = base.split("/") if base else []
    seen: list[str] = []
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            parts.pop()
        else:
            parts.append(part)
        seen.append("/".join(parts))
    return seen


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
    _remove_tree(partial)
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = check_members(tar, archive_size=archive_size, limits=limits)
            partial.mkdir(mode=0o755)
            tar.extractall(partial, members=members, filter="data")
        _fsync_tree(partial)
        os.rename(partial, destination)
    except tarfile.TarError as exc:
        _remove_tree(partial)
        raise AgentError("invalid_archive", f"{archive.name} is not a readable tar archive: {exc}") from exc
    except BaseException:
        _remove_tree(partial)
        raise
    fsync_directory(destination.parent)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _fsync_tree(root: Path) -> None:
    """The tree must be on disk before its name is: after a power cut the name means a whole tree."""
    for directory, _subdirs, files in os.walk(root):
        for file_name in files:
            path = os.path.join(directory, file_name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(directory))

"""The agent's careful file operations:

- writes that survive a crash: a reader sees the old file or the new one, never a torn one;
- trees removed without following a link and without a recursion, however deep they are;
- paths someone else names (an operator's file transfer) opened beneath a directory, one component
  at a time, never through a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from fleetkeeper_agent.errors import AgentError

COPY_CHUNK = 1024 * 1024
_BENEATH = os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> None:
    """Write `data` to `path` through a temporary file created with `mode` (so a key is never readable by
    others, not even for a moment), fsynced before it takes the final name.

    With `overwrite=False` the final step is a hard link, which fails if `path` exists: two writers
    racing for the same name cannot replace each other's file.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def copy_atomic(source: Path, path: Path, *, mode: int = 0o644) -> None:
    """`write_atomic` for a file too large to hold in memory: streamed from `source`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        # The umask may have narrowed the mode given to os.open; the caller asked for exactly `mode`.
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files a write of `path` left when the process was killed in the middle.

    Only for a path that one process writes at a time (an update module's target): another writer's
    temporary file would be removed from under it.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp")
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return
    for name in names:
        if pattern.fullmatch(name):
            (path.parent / name).unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove `path`, a file, a link or a whole tree, never following a link; nothing there is fine.

    In a loop that holds one directory open at a time, not a recursion that holds one per level (as
    shutil.rmtree does): a tree of any depth (an archive's) goes like any other. Coming back up
    through `..`, each directory must be the one the walk went down from; a tree moved meanwhile
    stops the removal with an OSError rather than letting it continue somewhere else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _BENEATH)
    way_down: list[tuple[str, int, int]] = []  # each step: the name entered, its parent's device and inode
    try:
        while True:
            child = _empty_but_directories(fd)
            if child is not None:
                here = os.fstat(fd)
                way_down.append((child, here.st_dev, here.st_ino))
                below = os.open(child, os.O_RDONLY | os.O_DIRECTORY | _BENEATH, dir_fd=fd)
                os.close(fd)
                fd = below
                continue
            if not way_down:
                break
            name, device, inode = way_down.pop()
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = parent
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) != (device, inode):
                raise OSError(errno.ESTALE, f"{path} was moved while it was being removed")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _empty_but_directories(fd: int) -> str | None:
    """Unlinks the entries of the directory `fd` up to its first subdirectory, and returns that
    subdirectory's name; None once the directory is empty."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=fd)
    return None


def fsync_directory(directory: Path) -> None:
    """Makes a rename durable: without it, a power cut may bring back the old directory entry."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        # Some filesystems refuse fsync on a directory; the rename is then as durable as they make it.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --- beneath a directory, never through a link ------------------------------------------------------
#
# A path checked first and opened afterwards can be made to name something else in between (a link
# swapped in for a file or a directory). So nothing here checks a path: each component is opened
# relative to the descriptor of the one before, with O_NOFOLLOW, and what was opened is checked on its
# descriptor. Once open, a rename or a swap of a name no longer changes what the descriptor is.


def components_beneath(path: str, roots: Sequence[Path]) -> tuple[Path, list[str]]:
    """The root among `roots` that the absolute `path` is spelled under, and the components below it.

    By spelling alone: a `..` is refused rather than resolved, and links are left to the walk of
    `open_directory_beneath`, which refuses them. A root may be given as configured or resolved."""
    if not path.startswith("/") or "\x00" in path:
        raise AgentError("path_not_allowed", "the path must be absolute, without NUL")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise AgentError("path_not_allowed", f"{path} has a '..' component: give the path within the root")
    for root in roots:
        for spelling in (os.path.abspath(root), os.path.realpath(root)):
            root_parts = [part for part in spelling.split("/") if part]
            if parts[: len(root_parts)] == root_parts:
                return root, parts[len(root_parts) :]
    raise AgentError("path_not_allowed", f"{path} is outside the device's file roots")


def open_directory_beneath(root: Path, parts: Sequence[str]) -> int:
    """A descriptor of the directory `root`/`parts`…, reached without following any link below `root`
    (`root` itself is the device owner's choice and is opened as configured)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refusal(exc, str(root)) from None
    try:
        for depth, part in enumerate(parts, start=1):
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _BENEATH, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, os.path.join(root, *parts[:depth]), fd, part) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_beneath(root: Path, parts: Sequence[str]) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file `root`/`parts`…, and its status, reached without
    following any link below `root`."""
    shown = os.path.join(root, *parts)
    if not parts:
        raise AgentError("is_a_directory", f"{shown} is a directory")
    directory = open_directory_beneath(root, parts[:-1])
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below like any non-file.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | _BENEATH
        fd = os.open(parts[-1], flags, dir_fd=directory)
    except OSError as exc:
        raise _refusal(exc, shown, directory, parts[-1]) from None
    finally:
        os.close(directory)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise AgentError("is_a_directory", f"{shown} is a directory")
        raise AgentError("path_not_allowed", f"{shown} is not a regular file")
    return fd, info


def create_file_beneath(root: Path, parts: Sequence[str], *, mode: int = 0o644) -> NewFile:
    """A `NewFile` that will replace (or become) the file `root`/`parts`…, in its directory reached
    without following any link below `root`. A link or anything but a regular file at that name is
    refused: it is not the operator's file to replace."""
    shown = os.path.join(root, *parts)
    if not parts:
        raise AgentError("is_a_directory", f"{shown} is a directory")
    directory = open_directory_beneath(root, parts[:-1])
    try:
        try:
            info = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise _link_refusal(shown)
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise AgentError("is_a_directory", f"{shown} is a directory")
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise AgentError("path_not_allowed", f"{shown} is not a regular file")
        return NewFile(directory, parts[-1], mode=mode)
    except BaseException:
        os.close(directory)
        raise


class NewFile:
    """A file written under a temporary name in a directory held by its descriptor (which it owns),
    fsynced, and renamed to `name` in that same directory by `commit`: a reader sees the old file or
    the new one, and a link swapped in for the directory's path meanwhile changes nothing."""

    def __init__(self, directory: int, name: str, *, mode: int = 0o644) -> None:
        self.directory = directory
        self.name = name
        self.temporary = f".{name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BENEATH
        self.fd = os.open(self.temporary, flags, mode, dir_fd=directory)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self) -> None:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.temporary, self.name, src_dir_fd=self.directory, dst_dir_fd=self.directory)
            with contextlib.suppress(OSError):  # as in fsync_directory
                os.fsync(self.directory)
        except BaseException:
            self.discard()
            raise
        os.close(self.directory)
        self.directory = -1

    def discard(self) -> None:
        """Removes the temporary file; safe to call again, and after `commit`."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.directory >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary, dir_fd=self.directory)
            os.close(self.directory)
            self.directory = -1


def _refusal(exc: OSError, shown: str, directory: int | None = None, name: str = "") -> AgentError:
    """What the operator is told when a component would not open."""
    if exc.errno == errno.ELOOP:
        return _link_refusal(shown)
    if exc.errno == errno.ENOTDIR and directory is not None:
        # O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR, not ELOOP.
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode):
                return _link_refusal(shown)
        return AgentError("not_found", f"{shown} is not a directory")
    if exc.errno == errno.ENOENT:
        return AgentError("not_found", f"{shown} does not exist")
    return AgentError("io_error", f"{shown}: {exc.strerror or exc}")


def _link_refusal(shown: str) -> AgentError:
    return AgentError(
        "path_not_allowed",
        f"{shown} is a symbolic link; file transfers follow no link below a file root: "
        "give the path the link points to",
    )

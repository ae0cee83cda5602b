"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path

COPY_CHUNK = 1024 * 1024


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


def fsync_directory(directory: Path) -> None:
    """Makes a rename durable: without it, a power cut may bring back the old directory entry."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        # Some filesystems refuse fsync on a directory; the rename is then as durable as they make it.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)

"""What the update-module tests share: contexts, tar building, exact snapshots of a tree, fake commands."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetkeeper_agent.modules import InstallContext


def release(
    payload: Path, module: str, *, name: str = "app", version: str = "1.0", counter: int = 1
) -> dict[str, Any]:
    data = payload.read_bytes()
    return {
        "name": name,
        "version": version,
        "release_counter": counter,
        "module": module,
        "device_types": ["rpi4"],
        "payload": {
            "path": f"payload/{payload.name}",
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    }


def context(
    tmp_path: Path,
    payload: Path,
    module: str,
    settings: Mapping[str, Any],
    *,
    version: str = "1.0",
    work: str = "work",
    name: str = "app",
) -> InstallContext:
    return InstallContext(
        release=release(payload, module, name=name, version=version),
        payload=payload,
        work_dir=tmp_path / work,
        settings=settings,
    )


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644


def build_tar(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.mode = member.mode
            info.linkname = member.linkname
            info.size = len(member.data) if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tar.addfile(info, io.BytesIO(member.data) if info.size else None)
    return path


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under `root` (and `root` itself): kind, permission bits, content digest or link target."""
    entries: dict[str, tuple[str, int, str]] = {}
    paths = [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]
    for path in paths:
        if not path.exists() and not path.is_symlink():
            continue
        info = os.lstat(path)
        key = path.relative_to(root).as_posix() if path != root else "."
        if stat.S_ISLNK(info.st_mode):
            entries[key] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[key] = ("dir", stat.S_IMODE(info.st_mode), "")
        else:
            entries[key] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def fake_command(bin_dir: Path, name: str, body: str) -> Path:
    """An executable `name` in `bin_dir`: a Python script (this interpreter) with `body` as its main code."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable} -S\n" + textwrap.dedent(body))  # -S: no site, quick start
    path.chmod(0o755)
    return path


def shell_command(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@contextmanager
def deep_tree(top: Path, levels: int, outside: Path) -> Iterator[None]:
    """`top`/a/a/…, `levels` directories deep, each holding a file and a link to `outside` (which a
    removal must not follow). Made relative to each directory's descriptor: the path soon passes
    PATH_MAX. Whatever the test leaves of it is removed by `rm`, since pytest's own clean-up of the
    temporary directories (shutil.rmtree) recurses once per level and would fail on it."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("a", dir_fd=fd)
            os.close(os.open("file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.symlink(outside, "outside", dir_fd=fd)
            below = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)
    try:
        yield
    finally:
        subprocess.run(["rm", "-rf", "--", str(top)], check=True)

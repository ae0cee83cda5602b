"""`directory`: a file tree (`payload.tar`) unpacked beside the live one, then swapped in atomically.

The configured `path` is a symbolic link to a sibling tree, `path -> <name>.<version>`. Install
unpacks the new tree as that sibling (safely, fleetkeeper_agent/unpack.py) and flips the link by
renaming a new link over it: a reader of `path` sees the old tree or the new one, never a mix. The
previous target stays until commit, which removes it (`keep_previous = true` keeps it). Once a
commit has begun removing it, rollback refuses (rollback_failed) rather than link a half tree.

The first install over a real directory (not yet a link) moves it aside as `<name>.pre-<version>`
and puts the link in its place: two renames, so for that one install only there is an instant
without `path`. A crash between them is finished by the next call.

Settings (`[modules.directory]`): `path` (required, absolute), `keep_previous` (false),
`max_unpacked_bytes` (8 GiB), `max_members` (100000).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import fsync_directory, remove_tree
from fleetkeeper_agent.modules.base import InstallContext, Settings, UpdateModule, read_journal, write_journal
from fleetkeeper_agent.unpack import (
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_TOTAL_BYTES,
    UnpackLimits,
    unpack_archive,
)

JOURNAL = "directory.json"


class DirectoryModule(UpdateModule):
    name = "directory"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        table = Settings(self.name, self.settings)
        self.path = table.path("path")
        if self.path.name in ("", ".", ".."):
            raise AgentError("invalid_settings", f"[modules.directory] path: {self.path} names no directory")
        self.parent = self.path.parent
        self.keep_previous = table.flag("keep_previous", False)
        self.limits = UnpackLimits(
            max_total_bytes=table.integer("max_unpacked_bytes", DEFAULT_MAX_TOTAL_BYTES),
            max_members=table.integer("max_members", DEFAULT_MAX_MEMBERS),
        )

    # --- install -------------------------------------------------------------------------------------

    def install(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL) or self._plan(ctx)
        tree = self.parent / journal["tree"]
        try:
            if not tree.exists():
                unpack_archive(ctx.payload, tree, max_archive_bytes=ctx.payload_length, limits=self.limits)
            previous = journal["previous"]
            if previous["kind"] == "directory" and self.path.is_dir() and not self.path.is_symlink():
                os.rename(self.path, self.parent / previous["saved"])
                fsync_directory(self.parent)
            self._point_to(journal["tree"])
        except OSError as exc:
            raise AgentError("install_failed", f"cannot install the tree at {self.path}: {exc}") from exc
        return False

    def _plan(self, ctx: InstallContext) -> dict[str, Any]:
        """Decide, before any change, what the previous state is and where the new tree goes; journal it
        so a call after a crash makes the same choices even though `path` may already have changed."""
        if not self.parent.is_dir():
            raise AgentError("install_failed", f"{self.parent} is not a directory")
        previous: dict[str, Any]
        if self.path.is_symlink():
            previous = {"kind": "symlink", "target": os.readlink(self.path)}
        elif self.path.is_dir():
            previous = {"kind": "directory", "saved": self._free_name(f"pre-{ctx.release_version}")}
        elif self.path.exists():
            raise AgentError("install_failed", f"{self.path} exists and is neither a link nor a directory")
        else:
            previous = {"kind": "none"}
        # Never the name the old link points to, even a dangling one: rollback points back to it.
        taken = {previous.get("target", "")}
        journal = {"previous": previous, "tree": self._free_name(ctx.release_version, taken)}
        write_journal(ctx, JOURNAL, journal)
        return journal

    def _free_name(self, suffix: str, taken: set[str] | None = None) -> str:
        """`<name>.<suffix>`, or with a counter when that exists (the same version installed again)."""
        base = f"{self.path.name}.{suffix}"
        candidate, counter = base, 1
        while (
            (self.parent / candidate).exists()
            or (self.parent / candidate).is_symlink()
            or candidate in (taken or set())
        ):
            counter += 1
            candidate = f"{base}.{counter}"
        return candidate

    def _point_to(self, target: str) -> None:
        temporary = self.parent / f".{self.path.name}.link"
        temporary.unlink(missing_ok=True)
        os.symlink(target, temporary)
        os.replace(temporary, self.path)
        fsync_directory(self.parent)

    # --- commit and rollback -------------------------------------------------------------------------

    def commit(self, ctx: InstallContext) -> None:
        journal = read_journal(ctx, JOURNAL)
        if journal is None or self.keep_previous:
            return
        previous = journal["previous"]
        old = None
        if previous["kind"] == "directory":
            old = previous["saved"]
        elif previous["kind"] == "symlink" and self._is_our_sibling(previous["target"], journal["tree"]):
            old = previous["target"]
        if old is not None:
            if journal.get("removing_previous") != old:
                # Journaled first: a commit that keeps failing is rolled back, and rollback must know.
                write_journal(ctx, JOURNAL, {**journal, "removing_previous": old})
            try:
                _remove_tree(self.parent / old)
            except OSError as exc:
                raise AgentError("commit_failed", f"cannot remove the previous tree {old}: {exc}") from exc

    def _is_our_sibling(self, target: str, tree: str) -> bool:
        """Only a tree this module would have made is removed: a link the user pointed elsewhere is theirs."""
        return "/" not in target and target.startswith(f"{self.path.name}.") and target != tree

    def rollback(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            return False
        if "removing_previous" in journal:  # a commit that failed: the previous tree may be half gone
            raise AgentError(
                "rollback_failed",
                f"the commit began removing the previous tree {journal['removing_previous']}: "
                f"{self.path} stays linked to the new tree {journal['tree']}",
            )
        previous = journal["previous"]
        try:
            if previous["kind"] == "symlink":
                self._point_to(previous["target"])
            elif previous["kind"] == "none":
                if self.path.is_symlink():
                    self.path.unlink()
                    fsync_directory(self.parent)
            else:
                saved = self.parent / previous["saved"]
                if self.path.is_symlink():
                    self.path.unlink()
                    fsync_directory(self.parent)
                if saved.is_dir() and not self.path.exists():
                    os.rename(saved, self.path)
                    fsync_directory(self.parent)
            _remove_tree(self.parent / journal["tree"])
            _remove_tree(self.parent / f".{journal['tree']}.partial")
            _remove_tree(self.parent / f".{self.path.name}.link")
        except OSError as exc:
            raise AgentError("rollback_failed", f"cannot restore {self.path}: {exc}") from exc
        return False


def _remove_tree(path: Path) -> None:
    """Remove a tree; a crash halfway leaves a smaller tree, which the next call removes."""
    if not (path.exists() or path.is_symlink()):
        return
    remove_tree(path)
    fsync_directory(path.parent)

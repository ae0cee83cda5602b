"""`file`: one file put into a configured directory, atomically, with the previous file kept for rollback.

Settings (`[modules.file]`): `directory` (required, absolute), `mode` (default 0o644).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import copy_atomic, fsync_directory, remove_stale_temporaries
from fleetkeeper_agent.modules.base import InstallContext, Settings, UpdateModule, read_journal, write_journal

JOURNAL = "file.json"
BACKUP = "previous"


class FileModule(UpdateModule):
    name = "file"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        table = Settings(self.name, self.settings)
        self.directory = table.path("directory")
        self.mode = table.mode("mode", 0o644)

    def install(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            journal = self._record_previous(ctx)
        target = Path(journal["target"])
        try:
            remove_stale_temporaries(target)
            copy_atomic(ctx.payload, target, mode=self.mode)
        except OSError as exc:
            raise AgentError("install_failed", f"cannot write {target}: {exc}") from exc
        return False

    def _record_previous(self, ctx: InstallContext) -> dict[str, Any]:
        """Back up what is at the target now, then journal it: the journal exists only once the backup is
        complete, and nothing touches the target before the journal exists."""
        if not self.directory.is_dir():
            raise AgentError("install_failed", f"{self.directory} is not a directory")
        target = self.directory / ctx.payload_name
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise AgentError("install_failed", f"{target} exists and is not a regular file")
        if info is not None:
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            copy_atomic(target, ctx.work_dir / BACKUP, mode=stat.S_IMODE(info.st_mode))
        journal = {"target": str(target), "had_previous": info is not None}
        write_journal(ctx, JOURNAL, journal)
        return journal

    def commit(self, ctx: InstallContext) -> None:
        # The file is in place since install; the backup goes with work_dir.
        return None

    def rollback(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            return False  # install never got as far as touching the target
        target = Path(journal["target"])
        try:
            remove_stale_temporaries(target)
            if journal["had_previous"]:
                backup = ctx.work_dir / BACKUP
                # Copied, not moved: a rollback cut short can run again from the same backup.
                copy_atomic(backup, target, mode=stat.S_IMODE(backup.stat().st_mode))
            else:
                target.unlink(missing_ok=True)
                fsync_directory(target.parent)
        except OSError as exc:
            raise AgentError("rollback_failed", f"cannot restore {target}: {exc}") from exc
        return False

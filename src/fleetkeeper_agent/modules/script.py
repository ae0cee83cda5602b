"""`script`: the payload is an executable, run with the phase as its one argument.

`<script> install`, then `<script> commit` or `<script> rollback`. Exit status 0 is success, anything
else a failure whose output tail is in the error. The script is copied into work_dir at install, so
commit and rollback run the very script that installed, even after a restart.

Its environment: the agent's, plus FLEETKEEPER_PHASE, FLEETKEEPER_RELEASE_NAME,
FLEETKEEPER_RELEASE_VERSION, FLEETKEEPER_RELEASE_COUNTER, FLEETKEEPER_WORK_DIR (the script's own
scratch space, kept until commit or rollback) and FLEETKEEPER_REBOOT_REQUEST: a path the script
creates (in `install` or `rollback`) to ask for a reboot.

The script carries the idempotency rule itself: after a power loss it is run again with the same
phase, and `rollback` may come after an `install` that was cut short or a `commit` that failed.

Settings (`[modules.script]`): `timeout` in seconds (600).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import copy_atomic
from fleetkeeper_agent.modules.base import InstallContext, Settings, UpdateModule, run_command

SCRIPT = "script"
FAILURE_CODES = {"install": "install_failed", "commit": "commit_failed", "rollback": "rollback_failed"}


class ScriptModule(UpdateModule):
    name = "script"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.timeout = Settings(self.name, self.settings).number("timeout", 600.0)

    def install(self, ctx: InstallContext) -> bool:
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            copy_atomic(ctx.payload, ctx.work_dir / SCRIPT, mode=0o700)
        except OSError as exc:
            raise AgentError("install_failed", f"cannot copy the script: {exc}") from exc
        return self._run(ctx, "install")

    def commit(self, ctx: InstallContext) -> None:
        if not (ctx.work_dir / SCRIPT).exists():
            raise AgentError("commit_failed", "the script is not in the work directory: was it installed?")
        self._run(ctx, "commit")

    def rollback(self, ctx: InstallContext) -> bool:
        if not (ctx.work_dir / SCRIPT).exists():
            return False  # install stopped before the script could run: nothing to undo
        return self._run(ctx, "rollback")

    def _run(self, ctx: InstallContext, phase: str) -> bool:
        reboot_request = ctx.work_dir / f"reboot-{phase}"
        reboot_request.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(
            FLEETKEEPER_PHASE=phase,
            FLEETKEEPER_RELEASE_NAME=ctx.release_name,
            FLEETKEEPER_RELEASE_VERSION=ctx.release_version,
            FLEETKEEPER_RELEASE_COUNTER=str(ctx.release.get("release_counter", "")),
            FLEETKEEPER_WORK_DIR=str(ctx.work_dir),
            FLEETKEEPER_REBOOT_REQUEST=str(reboot_request),
        )
        run_command(
            [str(ctx.work_dir / SCRIPT), phase],
            failure_code=FAILURE_CODES[phase],
            timeout=self.timeout,
            env=env,
            cwd=ctx.work_dir,
            log_path=ctx.work_dir / f"{phase}.log",
        )
        return reboot_request.exists()

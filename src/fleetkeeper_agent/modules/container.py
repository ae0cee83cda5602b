"""`container`: a container replaced by one from a new image, through the podman or docker CLI.

The payload is either a JSON document, or an image archive (`docker save` / `podman save` tar):

    {"image": "registry.example.com/app@sha256:…", "name": "app",
     "command": ["--port", "8080"], "options": ["--restart=unless-stopped", "-p", "8080:8080"],
     "pull": true}

`image` is required; `name` defaults to the release name; `command` is given to the image's
entrypoint; `options` go to `run` as they are (they are signed like everything else, and they can
grant anything the engine can: review them as you would code). For an archive, the image is the one
`load` reports, the container is named after the release and `options` come from the settings.

install: the image is pulled (or loaded) first, so a failed download leaves the old container running;
then the container of that name (if any) is stopped and renamed `<name>.fk-previous`, and the new
container is created under the name and started. commit removes the previous container;
rollback removes the new one, renames the previous back and starts it if it was running, and refuses
(rollback_failed) once a commit that failed has removed the previous one. Images are left to the
engine's own pruning.

Settings (`[modules.container]`): `engine` (a command; default the first of podman, docker on PATH),
`timeout` (600 s per engine command), `options` (a list, for image archives).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Mapping
from typing import Any

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules.base import (
    InstallContext,
    Settings,
    UpdateModule,
    read_journal,
    run_command,
    write_journal,
)

JOURNAL = "container.json"
ENGINES = ("podman", "docker")
MAX_DOCUMENT_BYTES = 1024 * 1024
PREVIOUS_SUFFIX = ".fk-previous"


class ContainerModule(UpdateModule):
    name = "container"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        table = Settings(self.name, self.settings)
        self.engine_setting = table.string("engine") if "engine" in self.settings else None
        self.timeout = table.number("timeout", 600.0)
        self.archive_options = table.strings("options", [])

    def _engine(self) -> str:
        """Found at each call, not at start: an engine installed later (or removed) is seen."""
        candidates = [self.engine_setting] if self.engine_setting else list(ENGINES)
        for candidate in candidates:
            found = shutil.which(candidate)
            if found:
                return found
        raise AgentError(
            "module_unavailable", f"no container engine found (looked for {', '.join(candidates)})"
        )

    def _run(self, ctx: InstallContext, *args: str, code: str, check: bool = True) -> str:
        result = run_command(
            [self._engine(), *args],
            failure_code=code,
            timeout=self.timeout,
            log_path=ctx.work_dir / "engine.log",
            check=check,
        )
        return result.stdout if result.returncode == 0 else ""

    def _state(self, ctx: InstallContext, name: str, code: str) -> str | None:
        """ "running", "stopped", or None when there is no container of that name."""
        result = run_command(
            [self._engine(), "container", "inspect", "--format", "{{.State.Running}}", name],
            failure_code=code,
            timeout=self.timeout,
            check=False,
        )
        if result.returncode != 0:
            return None
        return "running" if result.stdout.strip().lower() == "true" else "stopped"

    # --- install -------------------------------------------------------------------------------------

    def install(self, ctx: InstallContext) -> bool:
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        journal = read_journal(ctx, JOURNAL) or self._plan(ctx)
        name, backup = journal["name"], journal["backup"]
        code = "install_failed"
        # The image first: a pull that fails leaves the old container running, untouched.
        image = journal["image"]
        if journal["source"] == "archive":
            image = self._load(ctx)
        elif journal["pull"]:
            self._run(ctx, "pull", image, code=code)
        # The old container still has its name: this is the first time here (or a crash came before the
        # rename). Stop it, then move it aside.
        if (
            journal["previous"] is not None
            and self._state(ctx, backup, code) is None
            and self._state(ctx, name, code) is not None
        ):
            self._run(ctx, "stop", name, code=code)
            self._run(ctx, "rename", name, backup, code=code)
        if self._state(ctx, name, code) is not None:
            self._run(ctx, "rm", "--force", name, code=code)  # a half-made container from a cut-short call
        self._run(
            ctx, "run", "--detach", "--name", name, *journal["options"], image, *journal["command"], code=code
        )
        return False

    def _plan(self, ctx: InstallContext) -> dict[str, Any]:
        spec = self._read_payload(ctx)
        name = spec["name"]
        journal = {
            **spec,
            "backup": name + PREVIOUS_SUFFIX,
            "previous": self._state(ctx, name, "install_failed"),
        }
        write_journal(ctx, JOURNAL, journal)
        return journal

    def _read_payload(self, ctx: InstallContext) -> dict[str, Any]:
        with ctx.payload.open("rb") as source:
            head = source.read(MAX_DOCUMENT_BYTES + 1)
        if head.lstrip()[:1] == b"{":
            return self._read_document(ctx, head)
        if not tarfile.is_tarfile(ctx.payload):
            raise AgentError("install_failed", "the payload is neither a JSON document nor an image archive")
        return {
            "source": "archive",
            "image": "",
            "name": _container_name(ctx.release_name),
            "command": [],
            "options": self.archive_options,
            "pull": False,
        }

    def _read_document(self, ctx: InstallContext, head: bytes) -> dict[str, Any]:
        if len(head) > MAX_DOCUMENT_BYTES:
            raise AgentError("install_failed", f"the container document is over {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(head)
        except ValueError as exc:
            raise AgentError("install_failed", f"the container document is not JSON: {exc}") from exc

        def strings(key: str) -> list[str]:
            value = document.get(key, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise AgentError("install_failed", f"the container document's {key} is not a list of strings")
            return value

        image = document.get("image")
        if not isinstance(image, str) or not image or image.startswith("-"):
            raise AgentError("install_failed", "the container document names no image")
        pull = document.get("pull", True)
        if not isinstance(pull, bool):
            raise AgentError("install_failed", "the container document's pull is not true or false")
        return {
            "source": "document",
            "image": image,
            "name": _container_name(document.get("name", ctx.release_name)),
            "command": strings("command"),
            "options": strings("options"),
            "pull": pull,
        }

    def _load(self, ctx: InstallContext) -> str:
        output = self._run(ctx, "load", "--input", str(ctx.payload), code="install_failed")
        # docker: "Loaded image: app:1.2"; podman: "Loaded image: localhost/app:1.2" (or "image(s):").
        for line in output.splitlines():
            label, sep, value = line.partition(":")
            if sep and label.strip().lower() in ("loaded image", "loaded image(s)"):
                return value.strip().split(",")[0].strip()
        raise AgentError(
            "install_failed", f"the engine loaded the archive but named no image: {output[-500:]}"
        )

    # --- commit and rollback -------------------------------------------------------------------------

    def commit(self, ctx: InstallContext) -> None:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            return
        if self._state(ctx, journal["backup"], "commit_failed") is not None:
            if not journal.get("removing_previous"):
                # Journaled first: a commit that keeps failing is rolled back, and rollback must know.
                write_journal(ctx, JOURNAL, {**journal, "removing_previous": True})
            self._run(ctx, "rm", "--force", journal["backup"], code="commit_failed")

    def rollback(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            return False
        name, backup, code = journal["name"], journal["backup"], "rollback_failed"
        if journal["previous"] is None:
            if self._state(ctx, name, code) is not None:
                self._run(ctx, "rm", "--force", name, code=code)
            return False
        if journal.get("removing_previous") and self._state(ctx, backup, code) is None:
            raise AgentError(
                code, f"a commit that failed removed the previous container {backup}: the new {name} stays"
            )
        if self._state(ctx, backup, code) is not None:
            if self._state(ctx, name, code) is not None:
                self._run(ctx, "rm", "--force", name, code=code)
            self._run(ctx, "rename", backup, name, code=code)
        if journal["previous"] == "running" and self._state(ctx, name, code) != "running":
            self._run(ctx, "start", name, code=code)
        return False


def _container_name(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or not (value[0].isalnum() and all(c.isalnum() or c in "_.-" for c in value))
        or len(value) > 128
    ):
        raise AgentError("install_failed", f"{value!r} is not a valid container name")
    return value

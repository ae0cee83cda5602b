"""`package`: a Debian package installed with `dpkg -i`.

install reads the package's name and version from the .deb (`dpkg-deb -f`), notes the version
installed now (`dpkg-query`), keeps a copy of that version's .deb in work_dir when one can be found
(this module's cache of what it installed before, then apt's archive cache), and runs `dpkg -i`.
commit copies the new .deb into the module's cache, so the next update can go back to it.
rollback reinstalls the previous .deb, or removes (`dpkg -r`) a package that was not installed before.

Limits: dpkg does not fetch dependencies (a package whose dependencies are missing fails to install,
and rollback then restores the previous one); maintainer scripts run as they are written, and what
they did outside dpkg's files (a database migrated, a service's state) is not undone by installing
the old package again; a previous version whose .deb is in neither cache cannot be restored
(`rollback_failed`; `require_rollback = true` refuses such an install up front); conffiles keep
the local version (`--force-confdef --force-confold`).

Settings (`[modules.package]`): `cache_directory` (/var/lib/fleetkeeper-agent/packages),
`search_directories` (["/var/cache/apt/archives"]), `require_rollback` (false), `timeout` (1800 s),
`dpkg`, `dpkg_deb`, `dpkg_query` (the commands), `dpkg_options`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import copy_atomic, remove_stale_temporaries
from fleetkeeper_agent.modules.base import (
    InstallContext,
    Settings,
    UpdateModule,
    read_journal,
    run_command,
    write_journal,
)

JOURNAL = "package.json"
PREVIOUS_DEB = "previous.deb"
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
VERSION = re.compile(r"[A-Za-z0-9.+~:-]+")
QUERY_TIMEOUT = 120.0


class PackageModule(UpdateModule):
    name = "package"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        table = Settings(self.name, self.settings)
        self.cache_directory = table.path("cache_directory", "/var/lib/fleetkeeper-agent/packages")
        self.search_directories = [
            Path(p) for p in table.strings("search_directories", ["/var/cache/apt/archives"])
        ]
        self.require_rollback = table.flag("require_rollback", False)
        self.timeout = table.number("timeout", 1800.0)
        self.dpkg = table.string("dpkg", "dpkg")
        self.dpkg_deb = table.string("dpkg_deb", "dpkg-deb")
        self.dpkg_query = table.string("dpkg_query", "dpkg-query")
        self.dpkg_options = table.strings("dpkg_options", ["--force-confdef", "--force-confold"])

    # --- what the .deb is, what is installed -----------------------------------------------------------

    def read_control(self, deb: Path) -> tuple[str, str, str]:
        """(Package, Version, Architecture) of a .deb."""
        result = run_command(
            [self.dpkg_deb, "-f", str(deb), "Package", "Version", "Architecture"],
            failure_code="install_failed",
            timeout=QUERY_TIMEOUT,
        )
        fields = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        package, version = fields.get("Package", ""), fields.get("Version", "")
        if not PACKAGE_NAME.fullmatch(package) or not VERSION.fullmatch(version):
            raise AgentError("install_failed", f"{deb.name} has no valid Package and Version fields")
        return package, version, fields.get("Architecture", "")

    def installed_version(self, package: str, code: str) -> str | None:
        result = run_command(
            [self.dpkg_query, "-W", "-f", "${db:Status-Abbrev}\t${Version}", package],
            failure_code=code,
            timeout=QUERY_TIMEOUT,
            check=False,
        )
        status, _, version = result.stdout.partition("\t")
        # "ii " installed; "rc " only its configuration left: not installed as far as a rollback goes.
        if result.returncode != 0 or len(status) < 2 or status[1] not in "iUFHWt" or not version.strip():
            return None
        return version.strip()

    def _cached_deb(self, package: str, version: str) -> Path | None:
        # apt's archive names the file <package>_<version with ":" as %3a>_<arch>.deb.
        stems = {f"{package}_{version}_", f"{package}_{version.replace(':', '%3a')}_"}
        for directory in [self.cache_directory, *self.search_directories]:
            try:
                entries = sorted(os.listdir(directory))
            except OSError:
                continue
            for entry in entries:
                if entry.endswith(".deb") and any(entry.startswith(stem) for stem in stems):
                    candidate = directory / entry
                    try:
                        if self.read_control(candidate)[:2] == (package, version):
                            return candidate
                    except AgentError:
                        continue
        return None

    # --- the phases ----------------------------------------------------------------------------------

    def install(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL) or self._plan(ctx)
        self._dpkg(ctx, "install_failed", "--install", str(ctx.payload))
        if self.installed_version(journal["package"], "install_failed") != journal["version"]:
            raise AgentError(
                "install_failed",
                f"dpkg finished but {journal['package']} {journal['version']} is not installed",
            )
        return False

    def _plan(self, ctx: InstallContext) -> dict[str, Any]:
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        package, version, arch = self.read_control(ctx.payload)
        previous = self.installed_version(package, "install_failed")
        has_deb = False
        if previous is not None and previous != version:
            cached = self._cached_deb(package, previous)
            if cached is not None:
                copy_atomic(cached, ctx.work_dir / PREVIOUS_DEB)
                has_deb = True
            elif self.require_rollback:
                raise AgentError(
                    "install_failed",
                    f"{package} {previous} is installed and its .deb is not cached: no way back"
                    " (require_rollback = true)",
                )
        journal = {
            "package": package,
            "version": version,
            "architecture": arch,
            "previous": previous,
            "previous_deb": has_deb,
        }
        write_journal(ctx, JOURNAL, journal)
        return journal

    def _dpkg(self, ctx: InstallContext, code: str, *args: str) -> None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run_command(
            [self.dpkg, *self.dpkg_options, *args],
            failure_code=code,
            timeout=self.timeout,
            env=env,
            log_path=ctx.work_dir / "dpkg.log",
        )

    def commit(self, ctx: InstallContext) -> None:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            return
        package, version, arch = journal["package"], journal["version"], journal["architecture"]
        try:
            self.cache_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            keep = f"{package}_{version.replace(':', '%3a')}_{arch or 'all'}.deb"
            remove_stale_temporaries(self.cache_directory / keep)
            copy_atomic(ctx.payload, self.cache_directory / keep)
            # One .deb per package is enough to go back one release.
            for entry in os.listdir(self.cache_directory):
                if entry.startswith(f"{package}_") and entry.endswith(".deb") and entry != keep:
                    (self.cache_directory / entry).unlink(missing_ok=True)
        except OSError as exc:
            raise AgentError(
                "commit_failed", f"cannot keep {package} {version} in {self.cache_directory}: {exc}"
            ) from exc

    def rollback(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            return False
        package, previous = journal["package"], journal["previous"]
        if previous == journal["version"]:
            return False  # the same version was reinstalled: what runs is what ran
        if previous is None:
            if self.installed_version(package, "rollback_failed") is not None:
                self._dpkg(ctx, "rollback_failed", "--remove", package)
            return False
        if not journal["previous_deb"]:
            raise AgentError(
                "rollback_failed", f"{package} {previous} cannot be reinstalled: its .deb was not cached"
            )
        if self.installed_version(package, "rollback_failed") != previous:
            self._dpkg(ctx, "rollback_failed", "--install", str(ctx.work_dir / PREVIOUS_DEB))
        return False

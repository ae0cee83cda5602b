"""`rootfs-ab`: a root filesystem image written to the slot not running, then tried once by the bootloader.

install: the image goes to the inactive slot (block device, or a file in tests), fsynced and read back;
then the boot environment gets `upgrade_available=1 bootcount=0 boot_slot=<new>` in one write, and
install asks for a reboot. The bootloader boots the new slot, counting boots; if the agent does not
commit within `bootlimit` boots, the bootloader switches back on its own. An install never starts while
the running slot is itself on trial: the other slot is then the bootloader's way back.

The running slot is read from the kernel command line: the boot script adds `fleetkeeper.slot=<slot>`
(setting `cmdline_marker`) to the kernel's arguments. Without the marker, the slot whose block device is
mounted as `/` is the running one. `activated` is true when the running slot is the new one.

commit: `upgrade_available=0 bootcount=0` (refused unless the new slot is running). rollback:
`boot_slot=<old> upgrade_available=0 bootcount=0`, and a reboot is needed unless the old slot is
already running (the bootloader fell back by itself).

Settings (`[modules.rootfs-ab]`):

    slots = {a = "/dev/mmcblk0p2", b = "/dev/mmcblk0p3"}   # exactly two; the keys are the slot names
    bootloader = "u-boot"          # or "grub", "simulated"
    cmdline = "/proc/cmdline"
    cmdline_marker = "fleetkeeper.slot"
    verify = true                  # read the slot back and compare its SHA-256 with the image
    fw_printenv = "fw_printenv"    # u-boot
    fw_setenv = "fw_setenv"
    fw_env_config = "/etc/fw_env.config"   # optional
    grub_editenv = "grub-editenv"  # grub
    grubenv = "/boot/grub/grubenv"
    simulated_env = "/path/env.txt"   # simulated
    [modules.rootfs-ab.variables]  # the names in the boot environment, these by default
    upgrade_available = "upgrade_available"
    bootcount = "bootcount"
    boot_slot = "boot_slot"
    bootlimit = "bootlimit"
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules.base import InstallContext, Settings, UpdateModule, read_journal, write_journal
from fleetkeeper_agent.modules.bootloader import (
    BootEnvironment,
    BootVariables,
    GrubEnvironment,
    SimulatedBootloader,
    UBootEnvironment,
)

JOURNAL = "rootfs-ab.json"
CHUNK = 1024 * 1024
BOOTLOADERS = ("u-boot", "grub", "simulated")


class RootfsABModule(UpdateModule):
    name = "rootfs-ab"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        table = Settings(self.name, self.settings)
        slots = self.settings.get("slots")
        if (
            not isinstance(slots, Mapping)
            or len(slots) != 2
            or not all(isinstance(v, str) and Path(v).is_absolute() for v in slots.values())
        ):
            raise AgentError(
                "invalid_settings", "[modules.rootfs-ab] slots: expected two slots, {a = PATH, b = PATH}"
            )
        self.slots: dict[str, Path] = {str(name): Path(path) for name, path in slots.items()}
        self.cmdline = table.path("cmdline", "/proc/cmdline")
        self.marker = table.string("cmdline_marker", "fleetkeeper.slot")
        self.verify = table.flag("verify", True)
        names = self.settings.get("variables", {})
        if not isinstance(names, Mapping) or not all(isinstance(v, str) and v for v in names.values()):
            raise AgentError("invalid_settings", "[modules.rootfs-ab] variables: a table of variable names")
        try:
            self.variables = BootVariables(**names)
        except TypeError as exc:
            raise AgentError("invalid_settings", f"[modules.rootfs-ab] variables: {exc}") from exc
        self.bootloader = self._bootloader(table)

    def _bootloader(self, table: Settings) -> BootEnvironment:
        kind = table.string("bootloader", "u-boot")
        if kind == "u-boot":
            config = self.settings.get("fw_env_config")
            return UBootEnvironment(
                fw_printenv=table.string("fw_printenv", "fw_printenv"),
                fw_setenv=table.string("fw_setenv", "fw_setenv"),
                config=table.string("fw_env_config") if config is not None else None,
            )
        if kind == "grub":
            return GrubEnvironment(
                table.path("grubenv", "/boot/grub/grubenv"),
                grub_editenv=table.string("grub_editenv", "grub-editenv"),
            )
        if kind == "simulated":
            return SimulatedBootloader(
                table.path("simulated_env"),
                list(self.slots),
                cmdline_file=self.cmdline,
                marker=self.marker,
                variables=self.variables,
            )
        raise AgentError(
            "invalid_settings", f"[modules.rootfs-ab] bootloader: one of {', '.join(BOOTLOADERS)}"
        )

    # --- which slot runs -----------------------------------------------------------------------------

    def running_slot(self) -> str:
        try:
            arguments = self.cmdline.read_text().split()
        except FileNotFoundError:
            arguments = []
        for argument in arguments:
            key, sep, value = argument.partition("=")
            if sep and key == self.marker:
                if value not in self.slots:
                    raise AgentError(
                        "install_failed", f"the kernel says slot {value!r}, not one of {list(self.slots)}"
                    )
                return value
        root = os.stat("/").st_dev
        for name, path in self.slots.items():
            try:
                info = os.stat(path)
            except OSError:
                continue
            if stat.S_ISBLK(info.st_mode) and info.st_rdev == root:
                return name
        raise AgentError(
            "install_failed",
            f"cannot tell which slot runs: no {self.marker}= in {self.cmdline} and / is on neither slot",
        )

    def _other(self, slot: str) -> str:
        return next(name for name in self.slots if name != slot)

    # --- the phases ----------------------------------------------------------------------------------

    def install(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            # Chosen once: after the boot environment changed, a second call must not pick again.
            active = self.running_slot()
            self._refuse_while_on_trial(active)
            journal = {"active": active, "target": self._other(active), "written": False}
            write_journal(ctx, JOURNAL, journal)
        if not journal["written"]:
            self._write_image(ctx.payload, self.slots[journal["target"]])
            journal["written"] = True
            write_journal(ctx, JOURNAL, journal)
        names = self.variables
        self.bootloader.write(
            {names.upgrade_available: "1", names.bootcount: "0", names.boot_slot: journal["target"]}
        )
        return True

    def _refuse_while_on_trial(self, running: str) -> None:
        """The running slot still on trial means an install nobody committed nor rolled back (a rollback
        the agent gave up): the other slot is then the bootloader's only way back, not ours to write."""
        names = self.variables
        env = self.bootloader.read()
        if env.get(names.upgrade_available) == "1" and env.get(names.boot_slot) == running:
            raise AgentError(
                "install_failed",
                f"slot {running} runs on trial ({names.upgrade_available}=1) and slot {self._other(running)} "
                "is what the bootloader falls back to: not overwritten. Reboot until the bootloader has "
                "fallen back, or commit the running slot, then install again",
            )

    def _write_image(self, image: Path, slot: Path) -> None:
        length = image.stat().st_size
        digest = hashlib.sha256()
        try:
            fd = os.open(slot, os.O_WRONLY)
        except OSError as exc:
            raise AgentError("install_failed", f"cannot open the slot {slot}: {exc}") from exc
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            if not regular:
                capacity = os.lseek(fd, 0, os.SEEK_END)
                os.lseek(fd, 0, os.SEEK_SET)
                if length > capacity:
                    raise AgentError(
                        "install_failed", f"the image is {length} bytes, the slot {slot} {capacity}"
                    )
            with image.open("rb") as source:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            if regular:
                os.ftruncate(fd, length)
            os.fsync(fd)
        except OSError as exc:
            raise AgentError("install_failed", f"cannot write the slot {slot}: {exc}") from exc
        finally:
            os.close(fd)
        if self.verify and _digest_of(slot, length) != digest.hexdigest():
            raise AgentError("install_failed", f"the slot {slot} does not read back as the image was written")

    def activated(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        return journal is not None and self.running_slot() == journal["target"]

    def commit(self, ctx: InstallContext) -> None:
        journal = read_journal(ctx, JOURNAL)
        if journal is None or self.running_slot() != journal["target"]:
            raise AgentError("commit_failed", "the new slot is not the one running: nothing to commit")
        names = self.variables
        self.bootloader.write({names.upgrade_available: "0", names.bootcount: "0"})

    def rollback(self, ctx: InstallContext) -> bool:
        journal = read_journal(ctx, JOURNAL)
        if journal is None:
            return False
        if "rollback_reboot" not in journal:
            # Decided before the environment changes, and kept: a second call must answer the same.
            journal["rollback_reboot"] = self.running_slot() != journal["active"]
            write_journal(ctx, JOURNAL, journal)
        names = self.variables
        try:
            self.bootloader.write(
                {names.boot_slot: journal["active"], names.upgrade_available: "0", names.bootcount: "0"}
            )
        except AgentError as exc:
            raise AgentError("rollback_failed", exc.message) from exc
        return bool(journal["rollback_reboot"])


def _digest_of(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        remaining = length
        while remaining and (chunk := source.read(min(CHUNK, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()

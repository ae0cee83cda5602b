"""The bootloader's environment, the one channel between the agent and the bootloader for A/B updates.

Three backends with the same two operations, `read()` and `write(values)` (all values in one write):

- `UBootEnvironment`: the `fw_printenv` / `fw_setenv` commands of u-boot-tools (`fw_setenv -s FILE`
  sets several variables in one write of the environment);
- `GrubEnvironment`: `grub-editenv FILE list|set` of grub-common on the grubenv block;
- `SimulatedBootloader`: a text file of `name=value` lines for tests and development boards, which also
  plays the bootloader's part at boot (`simulate_boot`).

The variables (names configurable, `BootVariables`): `upgrade_available` is 1 while a new slot is on
trial, `bootcount` counts the boots of that trial, `boot_slot` is the slot to boot, `bootlimit` the
number of trial boots before the bootloader falls back to the other slot.
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import write_atomic
from fleetkeeper_agent.modules.base import run_command

COMMAND_TIMEOUT = 60.0
DEFAULT_BOOTLIMIT = 3


@dataclass(frozen=True)
class BootVariables:
    upgrade_available: str = "upgrade_available"
    bootcount: str = "bootcount"
    boot_slot: str = "boot_slot"
    bootlimit: str = "bootlimit"


def parse_environment(text: str) -> dict[str, str]:
    """`name=value` lines, as fw_printenv and grub-editenv list print them."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name and not name.startswith("#"):
            values[name] = value
    return values


def _check_values(values: Mapping[str, str]) -> None:
    for name, value in values.items():
        if not name or any(c in name for c in "= \t\n#") or "\n" in value:
            raise AgentError("bootloader_error", f"cannot store {name!r}={value!r} in the boot environment")


class BootEnvironment(ABC):
    @abstractmethod
    def read(self) -> dict[str, str]: ...

    @abstractmethod
    def write(self, values: Mapping[str, str]) -> None:
        """Set every variable of `values` in one update of the environment."""


class UBootEnvironment(BootEnvironment):
    def __init__(
        self, *, fw_printenv: str = "fw_printenv", fw_setenv: str = "fw_setenv", config: str | None = None
    ) -> None:
        self.fw_printenv = fw_printenv
        self.fw_setenv = fw_setenv
        self.config_args = ["-c", config] if config else []

    def read(self) -> dict[str, str]:
        result = run_command(
            [self.fw_printenv, *self.config_args], failure_code="bootloader_error", timeout=COMMAND_TIMEOUT
        )
        return parse_environment(result.stdout)

    def write(self, values: Mapping[str, str]) -> None:
        _check_values(values)
        # A script of "name value" lines: one write of the environment (and of its redundant copy).
        with tempfile.NamedTemporaryFile("w", prefix="fleetkeeper-fw-env-", suffix=".txt") as script:
            script.write("".join(f"{name} {value}\n" for name, value in values.items()))
            script.flush()
            run_command(
                [self.fw_setenv, *self.config_args, "-s", script.name],
                failure_code="bootloader_error",
                timeout=COMMAND_TIMEOUT,
            )


class GrubEnvironment(BootEnvironment):
    def __init__(self, env_file: Path, *, grub_editenv: str = "grub-editenv") -> None:
        self.env_file = env_file
        self.grub_editenv = grub_editenv

    def read(self) -> dict[str, str]:
        result = run_command(
            [self.grub_editenv, str(self.env_file), "list"],
            failure_code="bootloader_error",
            timeout=COMMAND_TIMEOUT,
        )
        return parse_environment(result.stdout)

    def write(self, values: Mapping[str, str]) -> None:
        _check_values(values)
        run_command(
            [self.grub_editenv, str(self.env_file), "set", *(f"{k}={v}" for k, v in values.items())],
            failure_code="bootloader_error",
            timeout=COMMAND_TIMEOUT,
        )


class SimulatedBootloader(BootEnvironment):
    """A bootloader in a file, for tests: its environment, and what it does at each boot.

    `simulate_boot()` is what U-Boot's bootcount logic does (and what a GRUB script can be written to
    do): while `upgrade_available=1` every boot increments `bootcount`; when it passes `bootlimit`
    (default 3) the bootloader gives up on the new slot, switches `boot_slot` to the other one and
    clears `upgrade_available`. It then "boots" `boot_slot`, writing the kernel command line marker
    `fleetkeeper.slot=<slot>` into `cmdline_file` as a real boot script would into the bootargs.
    """

    def __init__(
        self,
        env_file: Path,
        slots: Sequence[str],
        *,
        cmdline_file: Path | None = None,
        marker: str = "fleetkeeper.slot",
        variables: BootVariables | None = None,
    ) -> None:
        if len(slots) != 2:
            raise AgentError("invalid_settings", "the simulated bootloader needs exactly two slots")
        self.env_file = env_file
        self.slots = tuple(slots)
        self.cmdline_file = cmdline_file
        self.marker = marker
        self.variables = variables or BootVariables()

    def read(self) -> dict[str, str]:
        try:
            return parse_environment(self.env_file.read_text())
        except FileNotFoundError:
            return {}

    def write(self, values: Mapping[str, str]) -> None:
        _check_values(values)
        env = self.read() | dict(values)
        write_atomic(self.env_file, "".join(f"{k}={v}\n" for k, v in sorted(env.items())).encode())

    def simulate_boot(self) -> str:
        """One power-on: the bootloader's bookkeeping, then the slot it boots."""
        names = self.variables
        env = self.read()
        slot = env.get(names.boot_slot) or self.slots[0]
        if slot not in self.slots:
            raise AgentError("bootloader_error", f"boot_slot {slot!r} is none of {self.slots}")
        if env.get(names.upgrade_available) == "1":
            count = int(env.get(names.bootcount) or "0") + 1
            env[names.bootcount] = str(count)
            if count > int(env.get(names.bootlimit) or DEFAULT_BOOTLIMIT):
                slot = self.slots[1] if slot == self.slots[0] else self.slots[0]
                env[names.boot_slot] = slot
                env[names.upgrade_available] = "0"
            self.write(env)
        if self.cmdline_file is not None:
            write_atomic(self.cmdline_file, f"console=ttyS0 {self.marker}={slot}\n".encode())
        return slot

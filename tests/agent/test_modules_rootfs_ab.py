"""`rootfs-ab`: full A/B cycles with the simulated bootloader, and the U-Boot and GRUB backends driven
through fake `fw_printenv`/`fw_setenv`/`grub-editenv` commands (shell scripts over a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.modules import InstallContext, load_module
from fleetkeeper_agent.modules.bootloader import SimulatedBootloader, parse_environment
from fleetkeeper_agent.modules.rootfs_ab import RootfsABModule
from tests.agent.modulekit import context, shell_command

OLD_IMAGE = b"rootfs 1.0 " * 1000
NEW_IMAGE = b"rootfs 2.0 " * 3000


def slots(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "slot-a").write_bytes(OLD_IMAGE)
    (tmp_path / "slot-b").write_bytes(b"whatever was there before " * 5000)
    return {"a": str(tmp_path / "slot-a"), "b": str(tmp_path / "slot-b")}


def simulated(tmp_path: Path) -> tuple[RootfsABModule, InstallContext, SimulatedBootloader]:
    settings: dict[str, Any] = {
        "slots": slots(tmp_path),
        "bootloader": "simulated",
        "simulated_env": str(tmp_path / "bootenv.txt"),
        "cmdline": str(tmp_path / "cmdline"),
    }
    module = load_module("rootfs-ab", settings)
    assert isinstance(module, RootfsABModule)
    assert isinstance(module.bootloader, SimulatedBootloader)
    module.bootloader.write({"boot_slot": "a", "upgrade_available": "0", "bootcount": "0"})
    assert module.bootloader.simulate_boot() == "a"  # the device runs slot a
    payload = tmp_path / "rootfs.img"
    payload.write_bytes(NEW_IMAGE)
    return module, context(tmp_path, payload, "rootfs-ab", settings, version="2.0"), module.bootloader


def test_install_boot_activated_commit(tmp_path: Path) -> None:
    module, ctx, bootloader = simulated(tmp_path)
    assert module.install(ctx) is True
    assert module.install(ctx) is True
    assert (tmp_path / "slot-b").read_bytes() == NEW_IMAGE
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE
    env = bootloader.read()
    assert (env["upgrade_available"], env["bootcount"], env["boot_slot"]) == ("1", "0", "b")
    assert module.activated(ctx) is False  # not rebooted yet

    assert bootloader.simulate_boot() == "b"
    assert module.activated(ctx) is True
    assert module.activated(ctx) is True
    module.commit(ctx)
    module.commit(ctx)
    assert bootloader.read()["upgrade_available"] == "0"
    for _ in range(5):  # committed: no more counting, no fallback
        assert bootloader.simulate_boot() == "b"


def test_boots_that_never_commit_fall_back_after_bootlimit(tmp_path: Path) -> None:
    module, ctx, bootloader = simulated(tmp_path)
    module.install(ctx)
    for boot in range(1, 4):
        assert bootloader.simulate_boot() == "b"
        assert bootloader.read()["bootcount"] == str(boot)
        assert module.activated(ctx) is True
    assert bootloader.simulate_boot() == "a"  # the 4th boot is over bootlimit 3
    assert module.activated(ctx) is False
    assert bootloader.read()["upgrade_available"] == "0"
    assert module.rollback(ctx) is False  # the bootloader already went back
    assert module.rollback(ctx) is False
    assert bootloader.read()["boot_slot"] == "a"
    with pytest.raises(AgentError) as caught:
        module.commit(ctx)
    assert caught.value.code == "commit_failed"


def test_the_bootlimit_comes_from_the_environment(tmp_path: Path) -> None:
    module, ctx, bootloader = simulated(tmp_path)
    bootloader.write({"bootlimit": "1"})
    module.install(ctx)
    assert bootloader.simulate_boot() == "b"
    assert bootloader.simulate_boot() == "a"


def test_rollback_after_booting_the_new_slot_needs_a_reboot(tmp_path: Path) -> None:
    module, ctx, bootloader = simulated(tmp_path)
    env_before = bootloader.read()
    module.install(ctx)
    bootloader.simulate_boot()
    assert module.rollback(ctx) is True
    assert module.rollback(ctx) is True  # asked again after a crash: the same answer
    assert bootloader.simulate_boot() == "a"
    assert bootloader.read() == env_before
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE


def test_rollback_before_the_reboot_restores_the_environment(tmp_path: Path) -> None:
    module, ctx, bootloader = simulated(tmp_path)
    env_before = bootloader.read()
    module.install(ctx)
    assert module.rollback(ctx) is False
    assert bootloader.read() == env_before
    assert bootloader.simulate_boot() == "a"


def test_no_install_overwrites_the_fallback_of_a_slot_still_on_trial(tmp_path: Path) -> None:
    """The device runs b on trial (upgrade_available=1) and nothing will close the trial (its rollback
    was given up): a to be written now would leave the bootloader nothing known to fall back to. Once
    the bootloader has fallen back to a by itself, b is free to take the next release."""
    module, ctx, bootloader = simulated(tmp_path)
    module.install(ctx)
    assert bootloader.simulate_boot() == "b"
    payload = tmp_path / "rootfs-3.img"
    payload.write_bytes(b"rootfs 3.0 " * 2000)
    next_ctx = context(tmp_path, payload, "rootfs-ab", module.settings, version="3.0", work="work-3")

    with pytest.raises(AgentError, match="slot b runs on trial") as caught:
        module.install(next_ctx)
    assert caught.value.code == "install_failed"
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE
    assert module.rollback(next_ctx) is False  # nothing to undo
    assert bootloader.read()["boot_slot"] == "b"

    assert [bootloader.simulate_boot() for _ in range(3)] == ["b", "b", "a"]
    assert module.install(next_ctx) is True
    assert (tmp_path / "slot-b").read_bytes() == payload.read_bytes()
    assert (tmp_path / "slot-a").read_bytes() == OLD_IMAGE


def test_an_unknown_running_slot_is_refused(tmp_path: Path) -> None:
    module, ctx, _ = simulated(tmp_path)
    (tmp_path / "cmdline").write_text("console=ttyS0 root=/dev/nowhere\n")
    with pytest.raises(AgentError, match="cannot tell which slot runs") as caught:
        module.install(ctx)
    assert caught.value.code == "install_failed"
    assert (tmp_path / "slot-b").read_bytes() != NEW_IMAGE


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"slots": {"a": "/dev/x"}}, "expected two slots"),
        ({"slots": {"a": "dev/x", "b": "/dev/y"}}, "expected two slots"),
        ({"slots": {"a": "/dev/x", "b": "/dev/y"}, "bootloader": "lilo"}, "bootloader: one of"),
        ({"slots": {"a": "/dev/x", "b": "/dev/y"}, "variables": {"bootcounter": "x"}}, "variables"),
    ],
)
def test_settings_are_checked_at_load(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentError, match=message) as caught:
        load_module("rootfs-ab", settings)
    assert caught.value.code == "invalid_settings"


# --- real bootloader backends, through fake commands ----------------------------------------------------


def fake_uboot_tools(bin_dir: Path, env_file: Path, calls: Path) -> None:
    env_file.write_text("bootcmd=run distro_bootcmd\nboot_slot=a\nupgrade_available=0\nbootcount=0\n")
    shell_command(bin_dir, "fw_printenv", f'echo "fw_printenv $*" >> {calls}\ncat {env_file}\n')
    # fw_setenv -s FILE: lines of "name value"; an empty value deletes the variable.
    shell_command(
        bin_dir,
        "fw_setenv",
        f"""\
        echo "fw_setenv $*" >> {calls}
        [ "$1" = "-s" ] || {{ echo "fw_setenv: only -s is faked" >&2; exit 1; }}
        cat "$2" >> {calls}
        awk 'NR == FNR {{ name = $1; $1 = ""; sub(/^ /, ""); value[name] = $0; order[++n] = name; next }}
             {{ split($0, kv, "="); if (!(kv[1] in value)) print }}
             END {{ for (i = 1; i <= n; i++)
                      if (value[order[i]] != "") print order[i] "=" value[order[i]] }}' \\
            "$2" {env_file} > {env_file}.new && mv {env_file}.new {env_file}
        """,
    )


def fake_grub_editenv(bin_dir: Path, calls: Path) -> None:
    shell_command(
        bin_dir,
        "grub-editenv",
        f"""\
        echo "grub-editenv $*" >> {calls}
        file=$1; command=$2; shift 2
        [ -f "$file" ] || printf '# GRUB Environment Block\\n' > "$file"
        case $command in
          list) grep -v '^#' "$file" || true ;;  # a block of no variables lists nothing, exit 0
          set) for pair in "$@"; do
                 grep -v "^${{pair%%=*}}=" "$file" > "$file.new"
                 echo "$pair" >> "$file.new"
                 mv "$file.new" "$file"
               done ;;
          *) echo "grub-editenv: unknown command $command" >&2; exit 1 ;;
        esac
        """,
    )


def backend_cycle(tmp_path: Path, settings: dict[str, Any], env_file: Path) -> None:
    """install → reboot into b → activated → commit, then a second release rolled back from b."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 fleetkeeper.slot=a quiet\n")
    settings |= {"slots": slots(tmp_path), "cmdline": str(cmdline)}
    module = load_module("rootfs-ab", settings)
    payload = tmp_path / "rootfs.img"
    payload.write_bytes(NEW_IMAGE)
    ctx = context(tmp_path, payload, "rootfs-ab", settings, version="2.0")
    assert module.install(ctx) is True
    env = parse_environment(env_file.read_text())
    assert (env["upgrade_available"], env["bootcount"], env["boot_slot"]) == ("1", "0", "b")
    assert (tmp_path / "slot-b").read_bytes() == NEW_IMAGE
    cmdline.write_text("console=ttyS0 fleetkeeper.slot=b quiet\n")  # the reboot
    assert module.activated(ctx) is True
    module.commit(ctx)
    assert parse_environment(env_file.read_text())["upgrade_available"] == "0"

    ctx3 = context(tmp_path, payload, "rootfs-ab", settings, version="3.0", work="work-3")
    assert module.install(ctx3) is True
    assert parse_environment(env_file.read_text())["boot_slot"] == "a"
    assert module.rollback(ctx3) is False  # not rebooted: still on b, which is where it goes back to
    env = parse_environment(env_file.read_text())
    assert (env["boot_slot"], env["upgrade_available"]) == ("b", "0")


def test_uboot_backend_through_fw_printenv_and_fw_setenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, env_file, calls = tmp_path / "bin", tmp_path / "uboot.env", tmp_path / "calls.log"
    fake_uboot_tools(bin_dir, env_file, calls)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    backend_cycle(tmp_path, {"bootloader": "u-boot"}, env_file)
    assert parse_environment(env_file.read_text())["bootcmd"] == "run distro_bootcmd"  # others untouched
    log = calls.read_text()
    assert "fw_setenv -s " in log
    assert "upgrade_available 1\nbootcount 0\nboot_slot b\n" in log  # one write for all three


def test_uboot_backend_passes_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, env_file, calls = tmp_path / "bin", tmp_path / "uboot.env", tmp_path / "calls.log"
    fake_uboot_tools(bin_dir, env_file, calls)
    (bin_dir / "fw_setenv").write_text(f'#!/bin/sh\necho "fw_setenv $*" >> {calls}\nexit 0\n')
    settings = {
        "bootloader": "u-boot",
        "fw_printenv": str(bin_dir / "fw_printenv"),
        "fw_setenv": str(bin_dir / "fw_setenv"),
        "fw_env_config": "/etc/fw_env.config",
        "slots": {"a": "/dev/x", "b": "/dev/y"},
    }
    module = load_module("rootfs-ab", settings)
    assert isinstance(module, RootfsABModule)
    module.bootloader.write({"bootcount": "0"})
    assert "fw_setenv -c /etc/fw_env.config -s " in calls.read_text()


def test_grub_backend_through_grub_editenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, env_file, calls = tmp_path / "bin", tmp_path / "grubenv", tmp_path / "calls.log"
    fake_grub_editenv(bin_dir, calls)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    backend_cycle(tmp_path, {"bootloader": "grub", "grubenv": str(env_file)}, env_file)
    assert f"grub-editenv {env_file} set upgrade_available=1 bootcount=0 boot_slot=b" in calls.read_text()


def test_a_failing_bootloader_command_is_reported_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    shell_command(
        bin_dir, "grub-editenv", 'echo "grub-editenv: error: cannot open /boot/grub/grubenv" >&2\nexit 1\n'
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    module = load_module("rootfs-ab", {"bootloader": "grub", "slots": {"a": "/dev/x", "b": "/dev/y"}})
    assert isinstance(module, RootfsABModule)
    with pytest.raises(AgentError, match="cannot open /boot/grub/grubenv") as caught:
        module.bootloader.read()
    assert caught.value.code == "bootloader_error"


def test_a_missing_bootloader_tool_is_module_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    module = load_module("rootfs-ab", {"bootloader": "u-boot", "slots": {"a": "/dev/x", "b": "/dev/y"}})
    assert isinstance(module, RootfsABModule)
    with pytest.raises(AgentError) as caught:
        module.bootloader.read()
    assert caught.value.code == "module_unavailable"

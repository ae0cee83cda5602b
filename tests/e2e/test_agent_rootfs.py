"""A/B root filesystem updates through the whole system, with the simulated bootloader: the agent
asks for reboots, the test "reboots" the device (a new boot id, the bootloader's boot logic)."""

from __future__ import annotations

import sys

import pytest

from fleetkeeper_agent.modules.bootloader import SimulatedBootloader
from tests.e2e.fleet import Agent, Fleet

pytestmark = pytest.mark.timeout(600)

IMAGE_1 = b"root filesystem 1\n" * 4096
IMAGE_2 = b"root filesystem 2\n" * 4096


class Device:
    """The agent's device: two slot files, a boot environment, a kernel command line, a boot id."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.slots = {"a": agent.root / "slot-a.img", "b": agent.root / "slot-b.img"}
        for slot in self.slots.values():
            slot.write_bytes(b"")
        self.cmdline = agent.root / "cmdline"
        self.bootloader = SimulatedBootloader(agent.root / "bootenv", ["a", "b"], cmdline_file=self.cmdline)
        self.boots = 1
        self.bootloader.write({"boot_slot": "a", "bootlimit": "2"})
        self.bootloader.simulate_boot()
        self.health = agent.root / "health"
        self.health.write_text("ok")

    def config(self) -> dict[str, object]:
        check = f"import sys; sys.exit(open({str(self.health)!r}).read() != 'ok')"
        return {
            "health": [[sys.executable, "-c", check]],
            "extra_toml": "\n".join(
                [
                    "[modules.rootfs-ab]",
                    'bootloader = "simulated"',
                    f'simulated_env = "{self.agent.root / "bootenv"}"',
                    f'cmdline = "{self.cmdline}"',
                    f'slots = {{a = "{self.slots["a"]}", b = "{self.slots["b"]}"}}',
                ]
            )
            + "\n",
        }

    def power_cycle(self) -> str:
        self.boots += 1
        (self.agent.root / "boot_id").write_text(f"boot-{self.boots}\n")
        return self.bootloader.simulate_boot()

    def running(self) -> str:
        return self.cmdline.read_text().split("fleetkeeper.slot=")[1].strip()


async def test_an_ab_update_commits_in_the_new_slot_and_a_slot_that_never_commits_falls_back(
    fleet: Fleet,
) -> None:
    agent = fleet.agent("device-ab")
    device = Device(agent)
    agent.write_config(**device.config())  # type: ignore[arg-type]
    assert agent.run_once() == 3  # enrollment waits for an operator
    (device_id,) = await fleet.accept_pending(1)
    await fleet.release("os", "1", IMAGE_1, counter=1, module="rootfs-ab", file_name="rootfs.img")
    await fleet.release("os", "2", IMAGE_2, counter=2, module="rootfs-ab", file_name="rootfs.img")

    # Installed into b, rebooted into b, healthy: committed there.
    first = await fleet.deploy("os", "1", [device_id])
    assert agent.run_once() == 0, agent.log()
    assert agent.state()["phase"] == "rebooting"
    assert device.slots["b"].read_bytes() == IMAGE_1
    assert agent.run_once() == 0  # no reboot yet (same boot id): asks again, changes nothing
    assert agent.state()["phase"] == "rebooting"
    assert device.power_cycle() == "b"
    assert agent.run_once() == 0, agent.log()
    done = await fleet.wait_for(first, "finished")
    assert sum(counts.get("success", 0) for counts in done["progress"].values()) == 1
    assert device.bootloader.read()["upgrade_available"] == "0"
    assert agent.state()["installed"]["version"] == "1"

    # Release 2 goes to a, but its userspace never comes up: the agent never runs in slot a. The
    # bootloader counts the boots and goes back to b by itself; the agent then reports the failure.
    second = await fleet.deploy("os", "2", [device_id])
    assert agent.run_once() == 0, agent.log()
    assert device.slots["a"].read_bytes() == IMAGE_2
    assert [device.power_cycle() for _ in range(3)] == ["a", "a", "b"]
    assert agent.run_once() == 0, agent.log()
    failed = await fleet.wait_for(second, "finished")
    assert sum(counts.get("failure", 0) for counts in failed["progress"].values()) == 1
    assert device.running() == "b"
    assert agent.state()["installed"]["version"] == "1"
    records = await fleet.audit("deployment.device_failure")
    assert "did not boot" in records[0]["details"]["detail"]


async def test_an_ab_update_that_fails_its_health_check_is_rolled_back_with_a_reboot(
    fleet: Fleet,
) -> None:
    agent = fleet.agent("device-ab2")
    device = Device(agent)
    agent.write_config(**device.config())  # type: ignore[arg-type]
    assert agent.run_once() == 3  # enrollment waits for an operator
    (device_id,) = await fleet.accept_pending(1)
    await fleet.release("os", "1", IMAGE_1, counter=1, module="rootfs-ab", file_name="rootfs.img")
    deployment = await fleet.deploy("os", "1", [device_id])
    device.health.write_text("broken")
    assert agent.run_once() == 0, agent.log()
    assert device.power_cycle() == "b"
    assert agent.run_once() == 0, agent.log()  # health check fails: back to a, reboot asked
    assert agent.state()["phase"] == "rolling_back_rebooting"
    assert device.power_cycle() == "a"
    assert agent.run_once() == 0, agent.log()
    failed = await fleet.wait_for(deployment, "finished")
    assert sum(counts.get("failure", 0) for counts in failed["progress"].values()) == 1
    assert agent.state()["phase"] == "idle"
    assert device.running() == "a"

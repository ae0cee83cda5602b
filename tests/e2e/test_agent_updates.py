"""The whole update path on loopback: a server, real agents, signed releases, phased deployments."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.e2e.fleet import Agent, Fleet

pytestmark = pytest.mark.timeout(900)

CRASHING_AGENT = Path(__file__).with_name("crashing_agent.py")


async def enrolled_agents(fleet: Fleet, count: int) -> list[Agent]:
    agents = [fleet.agent(f"device-{index}") for index in range(count)]
    for agent in agents:
        agent.start()
    ids = await fleet.accept_pending(count)
    assert len(ids) == count
    return agents


async def device_ids(fleet: Fleet, agents: list[Agent]) -> list[str]:
    ids = []
    for agent in agents:
        for _ in range(100):
            if (agent.data_dir / "identity.json").exists() and agent.identity()["status"] == "accepted":
                break
            await asyncio.sleep(0.2)
        ids.append(agent.identity()["device_id"])
    return ids


async def test_three_agents_update_through_a_phased_deployment_then_roll_back_a_broken_release(
    fleet: Fleet,
) -> None:
    agents = await enrolled_agents(fleet, 3)
    devices = await device_ids(fleet, agents)
    await fleet.release("app", "1.0", b"application v1\n", counter=1, file_name="app.bin")
    deployment = await fleet.deploy(
        "app",
        "1.0",
        devices,
        phases=[{"size": {"count": 1}, "advance": "auto"}, {"size": {"percent": 100}, "advance": "auto"}],
    )
    finished = await fleet.wait_for(deployment, "finished", within=120)
    assert sum(counts.get("success", 0) for counts in finished["progress"].values()) == 3
    for agent in agents:
        assert agent.installed_file("app.bin").read_bytes() == b"application v1\n"
        assert agent.state()["installed"]["version"] == "1.0"
    # The inventory sent right after the commit names the release.
    for _ in range(50):
        inventory = (await fleet.device(devices[0]))["inventory"]
        if inventory.get("release", {}).get("version") == "1.0":
            break
        await asyncio.sleep(0.2)
    assert inventory["release"] == {"name": "app", "version": "1.0", "release_counter": 1}

    await fleet.release("app", "2.0", b"application v2 BROKEN\n", counter=2, file_name="app.bin")
    broken = await fleet.deploy("app", "2.0", devices)
    done = await fleet.wait_for(broken, "finished", within=120)
    assert sum(counts.get("failure", 0) for counts in done["progress"].values()) == 3
    for agent in agents:
        assert agent.installed_file("app.bin").read_bytes() == b"application v1\n", agent.log()
        assert agent.state()["installed"]["version"] == "1.0"
    failures = await fleet.audit("deployment.device_failure")
    assert len(failures) == 3
    assert all("application self-test: BROKEN" in record["details"]["detail"] for record in failures)


async def test_a_kill_at_any_step_ends_on_the_old_or_the_new_release_and_the_server_agrees(
    fleet: Fleet,
) -> None:
    agent = fleet.agent("device-k")
    assert agent.run_once() == 3  # asks to enroll; waits for an operator
    (device_id,) = await fleet.accept_pending(1)
    # Two releases with the same counter, deployed in turn: each deployment is a real install.
    releases = {"a": b"release a\n", "b": b"release b\n"}
    for version, payload in releases.items():
        await fleet.release("app", version, payload, counter=2, file_name="app.bin")
    first = await fleet.deploy("app", "a", [device_id])
    assert agent.run_once() == 0
    await fleet.wait_for(first, "finished")

    running = "a"
    step = 0
    while True:
        step += 1
        crashed_at_step = False
        for when in ("before", "after"):
            wanted = "b" if running == "a" else "a"
            deployment = await fleet.deploy("app", wanted, [device_id])
            status = agent.run_once(
                wrapper=[str(CRASHING_AGENT)], env={"CRASH_AT_SAVE": str(step), "CRASH_WHEN": when}
            )
            assert status in (0, -signal.SIGKILL), agent.log()
            crashed_at_step = crashed_at_step or status == -signal.SIGKILL
            content = agent.installed_file("app.bin").read_bytes()
            assert content in (releases[running], releases[wanted]), (
                f"kill at save {step} ({when}): {content!r}"
            )
            at_kill = await fleet.deployment(deployment)
            if any(counts.get("success") for counts in at_kill["progress"].values()):
                assert content == releases[wanted], f"the server records success, the device runs {content!r}"
            # Started again, the agent finishes what it began, and the server records the outcome.
            assert agent.run_once() == 0, agent.log()
            record = await fleet.wait_for(deployment, "finished")
            assert agent.installed_file("app.bin").read_bytes() == releases[wanted]
            assert sum(counts.get("success", 0) for counts in record["progress"].values()) == 1, record
            assert agent.state()["phase"] == "idle"
            assert agent.state()["outbox"] == []
            running = wanted
        if not crashed_at_step:
            break  # the install made fewer state writes than `step`: every one has been killed
    assert step > 8, f"an install should write its state more often than {step - 1} times"

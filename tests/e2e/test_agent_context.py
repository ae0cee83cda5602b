"""Installs that respect the device's context (windows, the busy hook) and updates it refuses."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.fleet import Agent, Fleet

pytestmark = pytest.mark.timeout(600)


async def device_status(fleet: Fleet, deployment_id: str) -> dict[str, int]:
    document = await fleet.deployment(deployment_id)
    totals: dict[str, int] = {}
    for counts in document["progress"].values():
        for status, count in counts.items():
            totals[status] = totals.get(status, 0) + count
    return totals


async def accepted(fleet: Fleet, agent: Agent) -> str:
    assert agent.run_once() == 3  # enrollment waits for an operator
    (device_id,) = await fleet.accept_pending(1)
    return device_id


async def test_the_busy_hook_and_a_closed_window_defer_the_install_but_not_the_download(fleet: Fleet) -> None:
    agent = fleet.agent("busy-device")
    busy_flag = agent.root / "busy"
    busy = [sys.executable, "-c", f"import os, sys; sys.exit(1 if os.path.exists({str(busy_flag)!r}) else 0)"]
    agent.write_config(busy_command=busy)
    device_id = await accepted(fleet, agent)
    await fleet.release("app", "1", b"release 1\n", counter=1, file_name="app.bin")

    busy_flag.write_text("the machine is cutting steel")
    deployment = await fleet.deploy("app", "1", [device_id])
    assert agent.run_once() == 0, agent.log()
    assert await device_status(fleet, deployment) == {"deferred": 1}
    assert agent.state()["phase"] == "downloaded"
    assert not agent.installed_file("app.bin").exists()
    busy_flag.unlink()
    assert agent.run_once() == 0, agent.log()
    assert await device_status(fleet, deployment) == {"success": 1}
    assert agent.installed_file("app.bin").read_bytes() == b"release 1\n"

    # A window that opens in a few hours: download now, install then.
    opens = datetime.now(UTC) + timedelta(hours=3)
    await fleet.release("app", "2", b"release 2\n", counter=2, file_name="app.bin")
    windowed = await fleet.deploy(
        "app",
        "2",
        [device_id],
        windows=[{"cron": f"{opens.minute} {opens.hour} * * *", "duration_minutes": 30, "timezone": "UTC"}],
    )
    assert agent.run_once() == 0, agent.log()
    assert await device_status(fleet, windowed) == {"deferred": 1}
    assert agent.state()["deferred_reason"].startswith("outside the maintenance window")
    assert agent.installed_file("app.bin").read_bytes() == b"release 1\n"
    reported = agent.state()["next_seq"]
    assert agent.run_once() == 0  # still closed: deferred once, not reported again
    assert agent.state()["next_seq"] == reported
    assert agent.state()["phase"] == "downloaded"


async def test_an_older_release_is_refused_reported_and_audited_as_a_security_event(fleet: Fleet) -> None:
    agent = fleet.agent("careful-device")
    device_id = await accepted(fleet, agent)
    await fleet.release("app", "5", b"release 5\n", counter=5, file_name="app.bin")
    await fleet.release("app", "4", b"release 4\n", counter=4, file_name="app.bin")
    current = await fleet.deploy("app", "5", [device_id])
    assert agent.run_once() == 0
    await fleet.wait_for(current, "finished")

    older = await fleet.deploy("app", "4", [device_id])
    assert agent.run_once() == 0, agent.log()
    assert await device_status(fleet, older) == {"refused": 1}
    assert agent.installed_file("app.bin").read_bytes() == b"release 5\n"
    (event,) = await fleet.audit("device.security_event")
    assert event["details"]["reason"] == "rollback_attack"
    assert event["outcome"] == "failure"
    refusals = await fleet.audit("deployment.device_refused")
    assert "rollback_attack" in refusals[0]["details"]["detail"]
    # Not retried: the next check-ins leave it alone.
    assert agent.run_once() == 0
    assert len(await fleet.audit("device.security_event")) == 1

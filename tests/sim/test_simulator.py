"""fleetkeeper-sim end to end: real enrollment with a token, check-ins, a deployment walked to the
end by the simulated devices, the state directory reused, and the refusals a user can meet."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.fleet import Fleet
from tests.sim.conftest import enrollment_token, report_of, run_sim, start_sim

DEVICES = 20
SIM = [sys.executable, "-m", "fleetkeeper_sim"]


async def accepted_devices(fleet: Fleet, group: str, count: int, within: float = 90) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        listed = await fleet.api.client.get(
            f"/api/v1/device-groups/{group}/devices", params={"limit": 100}, headers=fleet.admin
        )
        assert listed.status_code == 200, listed.text
        ids = [device["id"] for device in listed.json()["items"]]
        if len(ids) >= count or time.monotonic() > deadline:
            assert len(ids) == count, listed.text
            return ids
        await asyncio.sleep(0.5)


async def test_devices_enroll_install_a_deployment_and_are_reused(sim_fleet: Fleet, tmp_path: Path) -> None:
    fleet = sim_fleet
    token = await enrollment_token(fleet, group="simulated")
    await fleet.release(
        "fw", "1.0", b"simulated firmware\n" * 500, counter=1, device_types=("sim-a", "sim-b")
    )
    state = tmp_path / "sim-state"
    sim = start_sim(
        fleet.server,
        state,
        tmp_path / "sim.log",
        *("--token", token, "--devices", str(DEVICES), "--device-type", "sim-a", "--device-type", "sim-b"),
        *("--interval", "0.5", "--duration", "300", "--json"),
    )
    try:
        devices = await accepted_devices(fleet, "simulated", DEVICES)
        deployment = await fleet.deploy(
            "fw", "1.0", devices, phases=[{"size": {"count": 5}}, {"size": {"percent": 100}}]
        )
        finished = await fleet.wait_for(deployment, "finished", within=100)
    finally:
        sim.send_signal(signal.SIGINT)
        output, _ = sim.communicate(timeout=60)
    log = (tmp_path / "sim.log").read_text()
    assert sim.returncode == 0, log
    assert "Traceback" not in log
    counts = {phase["phase"]: phase["counts"] for phase in finished["statistics"]["phases"]}
    assert counts == {1: {"success": 5}, 2: {"success": 15}}, finished
    report = report_of(output)
    assert report["devices"] == {"accepted": DEVICES}
    assert report["errors"] == 0, report
    assert report["events"]["enrolled"] == DEVICES
    assert report["events"]["installed"] == DEVICES
    for kind in ("enroll", "checkin", "targets", "current", "report", "download", "inventory"):
        assert report["kinds"][kind]["requests"] > 0, kind
        assert report["kinds"][kind]["p99_ms"] is not None
    device = await fleet.device(devices[0])
    assert device["inventory"]["release"] == {"name": "fw", "version": "1.0", "release_counter": 1}

    # Two worker processes this time: the devices are split between them, the reports merged.
    again = run_sim(
        fleet.server, state, "--token", token, "--devices", str(DEVICES), "--processes", "2",
        "--interval", "1", "--duration", "3", "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    second = report_of(again.stdout)
    assert second["options"]["processes"] == 2
    assert second["devices"] == {"accepted": DEVICES}
    assert "enrolled" not in second["events"]
    assert "enroll" not in second["kinds"]
    assert second["kinds"]["checkin"]["requests"] >= DEVICES
    listed = await fleet.api.client.get("/api/v1/devices", params={"limit": 100}, headers=fleet.admin)
    assert len(listed.json()["items"]) == DEVICES


async def test_pending_devices_wait_for_an_operator(sim_fleet: Fleet, tmp_path: Path) -> None:
    fleet = sim_fleet
    token = await enrollment_token(fleet)
    done = run_sim(
        fleet.server,
        tmp_path / "state",
        "--token",
        token,
        "--devices",
        "2",
        "--pending",
        "1",
        "--interval",
        "1",
        "--duration",
        "2",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert report_of(done.stdout)["devices"] == {"accepted": 2, "pending": 1}
    pending = await fleet.api.client.get("/api/v1/devices", params={"status": "pending"}, headers=fleet.admin)
    assert len(pending.json()["items"]) == 1


async def test_a_bad_token_is_a_clear_error(sim_fleet: Fleet, tmp_path: Path) -> None:
    done = run_sim(
        sim_fleet.server,
        tmp_path / "state",
        "--token",
        "etk_bad.secret",
        "--devices",
        "3",
        "--duration",
        "30",
    )
    assert done.returncode == 2
    assert "refused the enrollment token" in done.stderr
    assert "Traceback" not in done.stderr


def test_only_loopback_servers(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not read: the address is refused first\n")
    for address in ("https://192.0.2.10:8443", "https://[2001:db8::1]:8443"):
        done = subprocess.run(
            [*SIM, "--server", address, "--ca", str(ca), "--state-dir", str(tmp_path / "state")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "not a loopback address" in done.stderr
        assert "Traceback" not in done.stderr
    plain = subprocess.run(
        [*SIM, "--server", "http://127.0.0.1:8443", "--ca", str(ca), "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plain.returncode == 2
    assert "expected https://" in plain.stderr
    assert not (tmp_path / "state").exists()


async def test_a_server_that_stops_is_counted_and_fails_the_run(sim_fleet: Fleet, tmp_path: Path) -> None:
    fleet = sim_fleet
    token = await enrollment_token(fleet, group="doomed")
    sim = start_sim(
        fleet.server,
        tmp_path / "state",
        tmp_path / "sim.log",
        "--token",
        token,
        "--devices",
        "5",
        "--interval",
        "0.5",
        "--duration",
        "300",
        "--timeout",
        "5",
    )
    try:
        await accepted_devices(fleet, "doomed", 5)
        fleet.server.stop()
        await asyncio.sleep(2)  # some check-ins meet the stopped server
    finally:
        sim.send_signal(signal.SIGINT)
        sim.communicate(timeout=60)
    log = (tmp_path / "sim.log").read_text()
    assert sim.returncode == 1, log
    assert "requests failed" in log
    assert "is the server running?" in log
    assert "Traceback" not in log

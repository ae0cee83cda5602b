from __future__ import annotations

from tests.e2e.fleet import Fleet
from tests.terminal.support import ChannelProcess, enrolled_agent, run_terminal


async def test_smoke(module_fleet: Fleet) -> None:
    fleet = module_fleet
    agent = await enrolled_agent(fleet, "smoke")
    channel = ChannelProcess.start(agent)
    try:
        await channel.wait_connected()
        token = fleet.admin["authorization"].split()[1]
        result = run_terminal(fleet.server.management_url, token, agent.device_id, "echo hello-from-device\nstty size\nexit\n", "--cols", "111", "--rows", "33")
        print(result.stdout, result.stderr)
        print(channel.log())
        assert "\nhello-from-device" in result.stdout
    finally:
        channel.stop()

"""Two server replicas on one PostgreSQL database: the device's channel is connected to one, the
operator to the other, and the session is relayed between them (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from fleetkeeper.terminal.protocol import encode_data
from tests.conftest import POSTGRES_URL, Api, PostgresServer, fleetkeeper_command, start_server
from tests.e2e.fleet import Fleet, management_client
from tests.terminal.support import ChannelProcess, enrolled_agent, run_terminal
from tests.terminal.test_terminal import printed

pytestmark = pytest.mark.timeout(300)


async def test_an_operator_on_one_replica_reaches_a_device_on_another(tmp_path: Path) -> None:
    postgres = PostgresServer(POSTGRES_URL)
    database_url = await postgres.create_database()
    try:
        upgraded = await asyncio.to_thread(
            subprocess.run,
            fleetkeeper_command("db", "upgrade", "--database-url", database_url),
            capture_output=True,
            check=False,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        # One data directory: the replicas share the CA and the online keys, as they would share a
        # volume or a secret store in production.
        data_dir = tmp_path / "data"
        replica_a = start_server(data_dir, database_url, timeout=120)
        replica_b = start_server(data_dir, database_url, timeout=120)
        try:
            async with management_client(replica_a) as client:
                assert replica_a.admin_password
                fleet = Fleet(replica_a, tmp_path, Api(client, None, replica_a.admin_password))  # type: ignore[arg-type]
                await fleet.setup()
                agent = await enrolled_agent(fleet, "far-device")
                channel = ChannelProcess.start(agent)  # connected to replica A's device listener
                try:
                    await channel.wait_connected()
                    token = fleet.admin["authorization"].split()[1]
                    result = await run_terminal(
                        replica_b.management_url,
                        token,
                        str(agent.device_id),
                        "echo hello-from-device\nexit\n",
                    )
                    assert printed(result.stdout, "hello-from-device"), (result.stderr, channel.log())
                    assert "session closed: exited" in result.stderr
                    # Recorded by replica B, readable from either.
                    sessions = await client.get(
                        "/api/v1/terminal/sessions",
                        params={"device_id": agent.device_id},
                        headers=fleet.admin,
                    )
                    recording = await client.get(
                        f"/api/v1/terminal/sessions/{sessions.json()[0]['id']}/recording", headers=fleet.admin
                    )
                    assert recording.status_code == 200, recording.text
                    assert "hello-from-device" in recording.text
                    assert channel.children() == []

                    # A replica that stops ends its sessions and stores their recordings first.
                    url = replica_b.management_url.replace("http://", "ws://")
                    async with connect(
                        f"{url}/api/v1/devices/{agent.device_id}/terminal",
                        additional_headers={"Authorization": f"Bearer {token}"},
                    ) as operator:
                        opened = json.loads(await operator.recv())
                        assert opened["type"] == "opened", opened
                        await operator.send(encode_data(opened["session"], b"echo before-$((6*7))\n"))
                        output = b""
                        while b"before-42" not in output:
                            frame = await operator.recv()
                            if isinstance(frame, bytes):
                                output += frame
                        await asyncio.to_thread(replica_b.stop)
                    ended = await client.get(
                        f"/api/v1/terminal/sessions/{opened['session']}", headers=fleet.admin
                    )
                    assert ended.json()["close_reason"] == "server_shutdown", ended.text
                    recording = await client.get(
                        f"/api/v1/terminal/sessions/{opened['session']}/recording", headers=fleet.admin
                    )
                    assert "before-42" in recording.text
                    for _ in range(300):  # the device ends the shell when the relay tells it to
                        if not channel.children():
                            break
                        await asyncio.sleep(0.1)
                    assert channel.children() == [], channel.log()
                finally:
                    channel.stop()
        finally:
            replica_a.stop()
            replica_b.stop()
    finally:
        await postgres.drop_all()

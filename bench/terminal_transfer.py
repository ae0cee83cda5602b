"""File transfer through the terminal relay: a real server, a real agent's control channel.

    python -m bench.terminal_transfer [--mebibytes 8]

Uploads and downloads one random file (PUT and GET /api/v1/devices/{id}/files) three ways: on
SQLite (one process, the in-process relay); on two PostgreSQL replicas sharing a database, with
the operator on the replica that holds the device's channel; and with the operator on the other
replica (LISTEN/NOTIFY both ways). Prints one JSON line per setup, MB/s each way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2
from tests.conftest import POSTGRES_URL, Api, PostgresServer, RunningServer, fleetkeeper_command, start_server
from tests.e2e.fleet import Agent, Fleet, management_client
from tests.terminal.support import ChannelProcess, enrolled_agent


async def measure(fleet: Fleet, agent: Agent, operator_url: str, setup: str, size: int) -> None:
    files = agent.root / "files"
    files.mkdir(exist_ok=True)
    payload = os.urandom(size)
    target = {"path": str(files / "payload.bin")}
    async with httpx2.AsyncClient(base_url=operator_url, timeout=600) as client:
        started = time.monotonic()
        sent = await client.put(
            f"/api/v1/devices/{agent.device_id}/files", params=target, content=payload, headers=fleet.admin
        )
        upload = time.monotonic() - started
        assert sent.status_code == 201, sent.text
        started = time.monotonic()
        got = await client.get(f"/api/v1/devices/{agent.device_id}/files", params=target, headers=fleet.admin)
        download = time.monotonic() - started
        assert got.content == payload
    print(
        json.dumps(
            {
                "benchmark": "terminal_file_transfer",
                "setup": setup,
                "bytes": size,
                "upload_mb_per_s": round(size / upload / 1e6, 1),
                "download_mb_per_s": round(size / download / 1e6, 1),
            }
        ),
        flush=True,
    )


async def device_on(server: RunningServer, workdir: Path, size: int) -> tuple[Fleet, Agent, ChannelProcess]:
    await asyncio.to_thread(workdir.mkdir)
    fleet = Fleet(server, workdir, Api(management_client(server), None, server.admin_password))  # type: ignore[arg-type]
    await fleet.setup()
    roots = [str(workdir / "agents" / "device" / "files")]
    agent = await enrolled_agent(fleet, "device", file_roots=roots, max_file_bytes=size)
    channel = ChannelProcess.start(agent)
    await channel.wait_connected()
    return fleet, agent, channel


async def run(size: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="terminal-bench-"))
    env = {"FLEETKEEPER_TERMINAL_MAX_FILE_BYTES": str(size)}
    server = start_server(work / "sqlite", timeout=120, env=env)
    try:
        fleet, agent, channel = await device_on(server, work / "fleet-sqlite", size)
        try:
            await measure(fleet, agent, server.management_url, "sqlite, in-process relay", size)
        finally:
            channel.stop()
            await fleet.api.client.aclose()
    finally:
        server.stop()
    postgres = PostgresServer(POSTGRES_URL)
    database_url = await postgres.create_database()
    try:
        await asyncio.to_thread(
            subprocess.run,
            fleetkeeper_command("db", "upgrade", "--database-url", database_url),
            check=True,
            capture_output=True,
        )
        replica_a = start_server(work / "pg", database_url, timeout=120, env=env)
        replica_b = start_server(work / "pg", database_url, timeout=120, env=env)
        try:
            fleet, agent, channel = await device_on(replica_a, work / "fleet-pg", size)
            try:
                await measure(fleet, agent, replica_a.management_url, "postgresql, same replica", size)
                await measure(fleet, agent, replica_b.management_url, "postgresql, across replicas", size)
            finally:
                channel.stop()
                await fleet.api.client.aclose()
        finally:
            replica_a.stop()
            replica_b.stop()
    finally:
        await postgres.drop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mebibytes", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.mebibytes * 1024 * 1024))


if __name__ == "__main__":
    main()

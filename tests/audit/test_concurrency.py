"""Concurrent appenders in separate OS processes leave one chain, nothing lost and nothing forked."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetkeeper.audit import AuditRecord, verify
from fleetkeeper.core.db import Database
from fleetkeeper.core.migrations import upgrade_async
from tests.conftest import BACKENDS, FreshDatabaseUrl

# Each process appends `count` records through record(), from `tasks` concurrent tasks, each record
# in its own transaction, starting at the same wall-clock moment as the other process.
APPENDER = """
import asyncio, sys, time
from fleetkeeper.audit import Actor, record
from fleetkeeper.core.db import Database

async def main(url: str, name: str, count: int, tasks: int, start_at: float) -> None:
    database = Database(url)
    actor = Actor(kind="device", id=name, name=name)

    async def worker(number: int) -> None:
        for index in range(count // tasks):
            async with database.transaction() as session:
                await record(session, actor=actor, action="device.checked_in", object_type="device",
                             object_id=f"{number}-{index}", details={"worker": number, "index": index})

    await asyncio.sleep(max(0.0, start_at - time.time()))
    try:
        await asyncio.gather(*(worker(number) for number in range(tasks)))
    finally:
        await database.dispose()

url, name, count, tasks, start_at = sys.argv[1:]
asyncio.run(main(url, name, int(count), int(tasks), float(start_at)))
"""


def run_appenders(url: str, script: Path, names: list[str], count: int, tasks: int) -> None:
    start_at = time.time() + 3  # past both interpreters' start-up, so that they really overlap
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), url, name, str(count), str(tasks), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=100)
        assert process.returncode == 0, stderr


@pytest.mark.parametrize("backend", BACKENDS)
async def test_two_processes_append_to_one_chain(
    backend: str, fresh_database_url: FreshDatabaseUrl, tmp_path: Path
) -> None:
    url = await fresh_database_url(backend)
    await upgrade_async(url)
    script = tmp_path / "appender.py"
    script.write_text(APPENDER)

    await asyncio.to_thread(run_appenders, url, script, ["dev_one", "dev_two"], 200, 4)

    database = Database(url)
    try:
        result = await verify(database)
        assert result.ok, result
        assert (result.checked, result.first_seq, result.last_seq) == (400, 1, 400)
        async with database.session() as session:
            actors = list(
                (await session.scalars(select(AuditRecord.actor_id).order_by(AuditRecord.seq))).all()
            )
    finally:
        await database.dispose()
    assert actors.count("dev_one") == actors.count("dev_two") == 200
    switches = sum(1 for before, after in pairwise(actors) if before != after)
    assert switches > 1, "the two processes did not interleave; the test proved nothing"

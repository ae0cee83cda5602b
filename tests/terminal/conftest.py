from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Api, start_server
from tests.e2e.fleet import Fleet, management_client


@pytest.fixture(scope="module")
async def module_fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    """One server (SQLite) for a module's tests: they each enroll their own devices. Two terminal
    sessions per device at most, so that the limit is reached in a test."""
    workdir: Path = tmp_path_factory.mktemp("terminal")
    server = start_server(
        workdir / "server", timeout=120, env={"FLEETKEEPER_TERMINAL_MAX_SESSIONS_PER_DEVICE": "2"}
    )
    try:
        async with management_client(server) as client:
            assert server.admin_password
            api = Api(client, None, server.admin_password)  # type: ignore[arg-type]
            fleet = Fleet(server, workdir, api)
            await fleet.setup()
            yield fleet
            fleet.stop()
    finally:
        server.stop()

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Api, start_server
from tests.e2e.fleet import Fleet, management_client


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    server = start_server(tmp_path / "server", timeout=120)
    try:
        async with management_client(server) as client:
            assert server.admin_password
            api = Api(client, None, server.admin_password)  # type: ignore[arg-type]
            fleet = Fleet(server, tmp_path, api)
            await fleet.setup()
            yield fleet
            fleet.stop()
    finally:
        server.stop()

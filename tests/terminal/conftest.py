from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.fleet import Fleet, running_fleet


@pytest.fixture(scope="module")
async def module_fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    """One server (SQLite) for a module's tests: they each enroll their own devices. Two terminal
    sessions per device at most, so that the limit is reached in a test."""
    async with running_fleet(
        tmp_path_factory.mktemp("terminal"), env={"FLEETKEEPER_TERMINAL_MAX_SESSIONS_PER_DEVICE": "2"}
    ) as fleet:
        yield fleet

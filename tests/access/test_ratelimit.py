"""Rate limits and back-off: brute force meets 429 with Retry-After, growing waits, per-token API
limits, and with Redis two server processes count against the same limits."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator

import httpx2
import pytest
import redis

from tests.conftest import (
    ADMIN_PASSWORD,
    POSTGRES_URL,
    Api,
    PostgresServer,
    RunningServer,
    RuntimeFactory,
    _drop,
    api_for,
    bearer,
    fleetkeeper_command,
    start_server,
)

REDIS_URL = os.environ.get("FLEETKEEPER_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


async def attempt(api: Api, password: str, username: str = "admin") -> httpx2.Response:
    return await api.client.post("/api/v1/auth/sign-in", json={"username": username, "password": password})


async def test_brute_force_meets_a_growing_back_off(api: Api) -> None:
    await api.admin_headers()
    for _ in range(3):
        assert (await attempt(api, "guess-guess-guess")).status_code == 401
    assert (await attempt(api, "guess-guess-guess")).status_code == 401  # the 4th failure sets a 1 s wait
    limited = await attempt(api, ADMIN_PASSWORD)
    assert limited.status_code == 429, "even the right password waits out the back-off"
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) == 1
    await asyncio.sleep(1.1)
    assert (await attempt(api, "guess-guess-guess")).status_code == 401  # the 5th: a 2 s wait now
    limited = await attempt(api, "guess-guess-guess")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) == 2
    await asyncio.sleep(2.1)
    assert (await attempt(api, ADMIN_PASSWORD)).status_code == 200


async def test_per_account_and_per_address_limits(runtime_factory: RuntimeFactory) -> None:
    runtime = await runtime_factory(
        sign_in_limit_per_account="3/minute", sign_in_limit_per_address="5/minute"
    )
    async with api_for(runtime) as api:
        for _ in range(3):
            await attempt(api, "x" * 12, username="someone")
        account = await attempt(api, "x" * 12, username="someone")
        assert account.status_code == 429
        assert int(account.headers["retry-after"]) > 1
        await attempt(api, "x" * 12, username="someone-else")
        address = await attempt(api, "x" * 12, username="a-third-one")
        assert address.status_code == 429


async def test_api_requests_are_limited_per_token(runtime_factory: RuntimeFactory) -> None:
    runtime = await runtime_factory(api_limit_per_principal="5/minute")
    async with api_for(runtime) as api:
        admin = await api.admin_headers()
        statuses = [(await api.client.get("/api/v1/me", headers=admin)).status_code for _ in range(6)]
        assert statuses[:4] == [200] * 4
        assert statuses[-1] == 429
        other = bearer(await api.sign_in("admin", ADMIN_PASSWORD))
        assert (await api.client.get("/api/v1/me", headers=other)).status_code == 200, (
            "per session, not global"
        )


@pytest.fixture
def two_servers_sharing_redis(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, RunningServer]]:
    # A prefix of this run's own: other test runs on the machine may share the Redis database.
    prefix = f"fktest-{secrets.token_hex(6)}"
    database_url = asyncio.run(PostgresServer(POSTGRES_URL).create_database())
    subprocess.run(
        fleetkeeper_command("db", "upgrade", "--database-url", database_url), check=True, capture_output=True
    )
    env = {"FLEETKEEPER_RATE_LIMIT_STORAGE": REDIS_URL, "FLEETKEEPER_RATE_LIMIT_KEY_PREFIX": prefix}
    first = start_server(tmp_path_factory.mktemp("one") / "data", database_url, env=env)
    second = start_server(tmp_path_factory.mktemp("two") / "data", database_url, env=env)
    yield first, second
    first.stop()
    second.stop()
    asyncio.run(_drop(database_url))
    shared = redis.Redis.from_url(REDIS_URL)
    for key in shared.scan_iter(f"{prefix}*"):
        shared.delete(key)


def test_two_processes_share_the_limits_through_redis(
    two_servers_sharing_redis: tuple[RunningServer, RunningServer],
) -> None:
    servers = two_servers_sharing_redis
    statuses = []
    for number in range(6):
        server = servers[number % 2]
        response = httpx2.post(
            f"{server.management_url}/api/v1/auth/sign-in",
            json={"username": "admin", "password": "guess-guess-guess"},
        )
        statuses.append(response.status_code)
    # Alone, each process would allow 3 free failures and then 1 more: 401 ×4 on each.
    # Shared, the 4 failures are counted across both and the 5th attempt waits.
    assert statuses[:4] == [401] * 4
    assert 429 in statuses[4:]

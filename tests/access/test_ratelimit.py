"""Rate limits and back-off: brute force meets 429 with Retry-After, growing waits, per-token API
limits, and with Redis two server processes count against the same limits."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx2
import pyotp
import pytest
import redis

from fleetkeeper.access import backoff
from fleetkeeper.server.app import create_management_app
from fleetkeeper.server.runtime import Runtime
from tests.access.test_twofactor import code_at, enrol
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
    for _ in range(3):  # the 3rd failure, the last free one, starts a 1 s wait
        assert (await attempt(api, "guess-guess-guess")).status_code == 401
    limited = await attempt(api, ADMIN_PASSWORD)
    assert limited.status_code == 429, "even the right password waits out the back-off"
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) == 1
    await asyncio.sleep(1.1)
    assert (await attempt(api, "guess-guess-guess")).status_code == 401  # the 4th: a 2 s wait now
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
    # Alone, each process would allow its 3 free failures: 401 ×3 on each, none waiting.
    # Shared, the 3 failures are counted across both and the 4th attempt waits.
    assert statuses[:3] == [401] * 3
    assert 429 in statuses[3:]


# --- who the back-off holds back --------------------------------------------------------------


@pytest.fixture
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first wait after the free failures lasts ten minutes, so that a test sees a back-off
    still holding however slowly it runs (no test waits one out: that is timed above)."""
    monkeypatch.setattr(backoff, "FIRST_WAIT_SECONDS", 600.0)


@asynccontextmanager
async def client_at(runtime: Runtime, address: str) -> AsyncIterator[httpx2.AsyncClient]:
    """The management app reached from another client address than the `api` fixture's."""
    transport = httpx2.ASGITransport(app=create_management_app(runtime), client=(address, 40000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def sign_in_from(client: httpx2.AsyncClient, username: str, password: str) -> int:
    response = await client.post("/api/v1/auth/sign-in", json={"username": username, "password": password})
    return response.status_code


async def test_an_attacker_elsewhere_does_not_keep_the_owner_out(api: Api, long_waits: None) -> None:
    await api.admin_headers()
    async with client_at(api.runtime, "198.51.100.66") as attacker:
        statuses = [await sign_in_from(attacker, "admin", f"guess-{n}-guess-guess") for n in range(15)]
        assert statuses[:3] == [401] * 3
        assert set(statuses[3:]) == {429}, statuses
        assert (await attempt(api, ADMIN_PASSWORD)).status_code == 200, "the owner, from their own network"
        assert await sign_in_from(attacker, "admin", ADMIN_PASSWORD) == 429, "the attacker still waits"
    async with client_at(api.runtime, "192.0.2.67") as colleague:
        assert await sign_in_from(colleague, "admin", ADMIN_PASSWORD) == 200


async def test_one_address_spraying_many_accounts_is_held_back(
    runtime_factory: RuntimeFactory, long_waits: None
) -> None:
    runtime = await runtime_factory(sign_in_failures_per_address=5)
    async with api_for(runtime) as api:
        await api.admin_headers()
        async with client_at(runtime, "198.51.100.99") as sprayer:
            statuses = [await sign_in_from(sprayer, f"user-{n}", "guess-guess-guess") for n in range(8)]
            assert statuses[:5] == [401] * 5
            assert set(statuses[5:]) == {429}, statuses
            assert await sign_in_from(sprayer, "admin", ADMIN_PASSWORD) == 429, "the whole network waits"
        assert (await attempt(api, ADMIN_PASSWORD)).status_code == 200, "other networks do not"


async def test_a_distributed_attack_on_one_account_trips_its_own_cap(
    runtime_factory: RuntimeFactory, long_waits: None
) -> None:
    runtime = await runtime_factory(sign_in_failures_per_account=9)
    async with api_for(runtime) as api:
        await api.admin_headers()
        for number in range(3):
            async with client_at(runtime, f"198.51.{number + 10}.1") as bot:
                statuses = [await sign_in_from(bot, "admin", "guess-guess-guess") for _ in range(3)]
                assert statuses == [401] * 3, "each network alone is within its free failures"
        async with client_at(runtime, "192.0.2.1") as elsewhere:
            assert await sign_in_from(elsewhere, "admin", ADMIN_PASSWORD) == 429, (
                "nine failures from everywhere, nine free: the account waits (but not for its "
                "owner's own networks: test_signin_networks)"
            )


# --- passwords and codes checked outside sign-in ----------------------------------------------


async def test_wrong_current_passwords_meet_the_same_back_off(api: Api, long_waits: None) -> None:
    admin = await api.admin_headers()
    body = {"current_password": "wrong-wrong-wrong", "new_password": "amber-harvest-pylon-64"}
    statuses = [
        (await api.client.post("/api/v1/me/password", json=body, headers=admin)).status_code
        for _ in range(15)
    ]
    assert statuses[:3] == [403] * 3
    assert set(statuses[3:]) == {429}, statuses
    right = {"current_password": ADMIN_PASSWORD, "new_password": "amber-harvest-pylon-64"}
    limited = await api.client.post("/api/v1/me/password", json=right, headers=admin)
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert "retry-after" in limited.headers


async def test_wrong_codes_and_passwords_for_two_factor_meet_the_back_off(api: Api, long_waits: None) -> None:
    admin = await api.admin_headers()
    started = await api.client.post("/api/v1/me/2fa/totp", headers=admin)
    confirm = [
        (
            await api.client.post("/api/v1/me/2fa/totp/confirm", json={"code": "000000"}, headers=admin)
        ).status_code
        for _ in range(6)
    ]
    assert confirm[:3] == [403] * 3
    assert set(confirm[3:]) == {429}, confirm
    code = pyotp.TOTP(started.json()["secret"]).now()
    still = await api.client.post("/api/v1/me/2fa/totp/confirm", json={"code": code}, headers=admin)
    assert still.status_code == 429, "even the right code waits"


async def test_disabling_two_factor_and_new_recovery_codes_meet_the_back_off(
    api: Api, long_waits: None
) -> None:
    secret, _ = await enrol(api, await api.admin_headers())
    headers = bearer(await api.sign_in("admin", ADMIN_PASSWORD, totp_code=code_at(secret, 1)))
    wrong_password = {"password": "wrong-wrong-wrong", "code": "000000"}
    statuses = [
        (
            await api.client.post("/api/v1/me/2fa/totp/disable", json=wrong_password, headers=headers)
        ).status_code
        for _ in range(15)
    ]
    assert statuses[:3] == [403] * 3
    assert set(statuses[3:]) == {429}, statuses
    codes = await api.client.post("/api/v1/me/2fa/recovery-codes", json={"code": "000000"}, headers=headers)
    assert codes.status_code == 429, "one count per account, whichever check failed"


async def test_wrong_passwords_for_a_new_api_token_meet_the_back_off(api: Api, long_waits: None) -> None:
    admin = await api.admin_headers()
    wrong = {"name": "ci", "password": "wrong-wrong-wrong"}
    statuses = [
        (await api.client.post("/api/v1/me/tokens", json=wrong, headers=admin)).status_code for _ in range(6)
    ]
    assert statuses[:3] == [403] * 3
    assert set(statuses[3:]) == {429}, statuses
    right = {"name": "ci", "password": ADMIN_PASSWORD}
    limited = await api.client.post("/api/v1/me/tokens", json=right, headers=admin)
    assert limited.status_code == 429, "even the right password waits"
    assert limited.json()["code"] == "rate_limited"
    body = {"current_password": ADMIN_PASSWORD, "new_password": "amber-harvest-pylon-64"}
    password = await api.client.post("/api/v1/me/password", json=body, headers=admin)
    assert password.status_code == 429, "one count per account, whichever check failed"

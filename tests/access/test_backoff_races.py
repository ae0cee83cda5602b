"""Concurrent wrong answers do not race past the back-off: each attempt is counted before its
password or code is checked, so however many come at once, at most a count's free failures are
ever checked before it waits; in memory and in Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2
import pytest
import redis

from fleetkeeper.access import backoff
from tests.conftest import ADMIN_PASSWORD, Api, RuntimeFactory, api_for, bearer
from tests.helpers.access import REDIS_URL, code_at, enrol

FREE = backoff.FREE_FAILURES
AT_ONCE = 40


@pytest.fixture(autouse=True)
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait outlasts the test however slowly it runs: no attempt may slip through by a wait
    ending (nothing here waits one out)."""
    monkeypatch.setattr(backoff, "FIRST_WAIT_SECONDS", 600.0)


async def statuses_at_once(send: Callable[[], Awaitable[httpx2.Response]], count: int) -> Counter[int]:
    responses = await asyncio.gather(*(send() for _ in range(count)))
    for response in responses:
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited"
            assert int(response.headers["retry-after"]) > 0
    return Counter(response.status_code for response in responses)


async def wrong_sign_ins_at_once(api: Api, count: int) -> Counter[int]:
    async def send() -> httpx2.Response:
        return await api.client.post(
            "/api/v1/auth/sign-in", json={"username": "admin", "password": "guess-guess-guess"}
        )

    return await statuses_at_once(send, count)


async def test_concurrent_wrong_sign_ins_are_checked_no_more_than_the_free_failures(
    runtime_factory: RuntimeFactory,
) -> None:
    # The per-account request limit would refuse most of them first: it is not what is tested.
    runtime = await runtime_factory(
        sign_in_limit_per_account="1000/minute", sign_in_limit_per_address="1000/minute"
    )
    async with api_for(runtime) as api:
        await api.admin_headers()
        statuses = await wrong_sign_ins_at_once(api, AT_ONCE)
        assert statuses == {401: FREE, 429: AT_ONCE - FREE}, statuses
        right = await api.client.post(
            "/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert right.status_code == 429, "the wait holds the right password too"


# Every check of a password or code outside sign-in: (path, body, needs two-factor sign-in on).
REAUTHENTICATIONS = {
    "password change": (
        "/api/v1/me/password",
        {"current_password": "wrong-wrong-wrong", "new_password": "amber-harvest-pylon-64"},
        False,
    ),
    "api token": ("/api/v1/me/tokens", {"name": "ci", "password": "wrong-wrong-wrong"}, False),
    "2fa confirm": ("/api/v1/me/2fa/totp/confirm", {"code": "000000"}, False),
    "2fa disable": ("/api/v1/me/2fa/totp/disable", {"password": "wrong-wrong-wrong", "code": "000000"}, True),
    "recovery codes": ("/api/v1/me/2fa/recovery-codes", {"code": "000000"}, True),
}


@pytest.mark.parametrize("check", sorted(REAUTHENTICATIONS))
async def test_concurrent_wrong_answers_outside_sign_in_are_checked_no_more_than_the_free_failures(
    api: Api, check: str
) -> None:
    path, body, with_two_factor = REAUTHENTICATIONS[check]
    headers = await api.admin_headers()
    if with_two_factor:
        secret, _ = await enrol(api, headers)
        headers = bearer(await api.sign_in("admin", ADMIN_PASSWORD, totp_code=code_at(secret, 1)))
    elif path.startswith("/api/v1/me/2fa/totp/confirm"):
        assert (await api.client.post("/api/v1/me/2fa/totp", headers=headers)).status_code == 200

    async def send() -> httpx2.Response:
        return await api.client.post(path, json=body, headers=headers)

    statuses = await statuses_at_once(send, AT_ONCE)
    assert statuses == {403: FREE, 429: AT_ONCE - FREE}, statuses


@pytest.fixture
async def redis_api(runtime_factory: RuntimeFactory) -> AsyncIterator[Api]:
    """The management app counting in Redis, under a key prefix of this test's own."""
    prefix = f"fktest-{secrets.token_hex(6)}"
    runtime = await runtime_factory(
        rate_limit_storage=REDIS_URL,
        rate_limit_key_prefix=prefix,
        sign_in_limit_per_account="1000/minute",
        sign_in_limit_per_address="1000/minute",
    )
    try:
        async with api_for(runtime) as api:
            yield api
    finally:
        shared = redis.Redis.from_url(REDIS_URL)
        for key in shared.scan_iter(f"{prefix}*"):
            shared.delete(key)


async def test_concurrent_wrong_answers_counted_in_redis_are_checked_no_more_than_the_free_failures(
    redis_api: Api,
) -> None:
    jane = await redis_api.create_user("jane", "tulip-orbit-canyon-7")
    statuses = await wrong_sign_ins_at_once(redis_api, AT_ONCE)
    assert statuses == {401: FREE, 429: AT_ONCE - FREE}, statuses
    body = {"current_password": "wrong-wrong-wrong", "new_password": "amber-harvest-pylon-64"}

    async def send() -> httpx2.Response:
        return await redis_api.client.post("/api/v1/me/password", json=body, headers=jane)

    statuses = await statuses_at_once(send, AT_ONCE)
    assert statuses == {403: FREE, 429: AT_ONCE - FREE}, statuses

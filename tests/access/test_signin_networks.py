"""Failed sign-ins at one account are counted per network (an IPv4 /24, an IPv6 /64), not per
address, so that a block of addresses is one source; at any accounts, per IPv4 address (an IPv6
/64), so that a neighbour does not keep a /24 out; and the count of an account from everywhere
does not keep out its owner from a network they signed in from lately, nor with a valid second
factor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from fleetkeeper.access import backoff
from fleetkeeper.access.models import SignInNetwork
from fleetkeeper.core.db import utcnow
from tests.conftest import ADMIN_PASSWORD, Api, RuntimeFactory, api_for
from tests.helpers.access import client_at, code_at, enrol, sign_in_from

FREE = backoff.FREE_FAILURES
GUESS = "guess-guess-guess"


@pytest.fixture(autouse=True)
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff, "FIRST_WAIT_SECONDS", 600.0)


async def guesses(api: Api, addresses: Sequence[str], *, username: str = "admin") -> list[int]:
    statuses = []
    for address in addresses:
        async with client_at(api.runtime, address) as client:
            statuses.append(await sign_in_from(client, username, GUESS))
    return statuses


async def test_addresses_of_one_ipv4_network_share_their_failures(api: Api) -> None:
    await api.admin_headers()
    statuses = await guesses(api, [f"198.51.100.{n}" for n in range(1, 6)])
    assert statuses == [401] * FREE + [429] * 2, "the /24 is one source, whichever address it uses"
    async with client_at(api.runtime, "198.51.100.200") as neighbour:
        assert await sign_in_from(neighbour, "admin", ADMIN_PASSWORD) == 429
    async with client_at(api.runtime, "198.51.101.1") as elsewhere:
        assert await sign_in_from(elsewhere, "admin", ADMIN_PASSWORD) == 200, "another /24 is not held"


async def test_addresses_of_one_ipv6_network_share_their_failures(api: Api) -> None:
    await api.admin_headers()
    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9", "2001:db8:1:2:aaaa::1"]
    assert await guesses(api, same_64) == [401] * FREE + [429], "a /64 is one source"
    async with client_at(api.runtime, "2001:db8:1:3::1") as next_door:
        assert await sign_in_from(next_door, "admin", ADMIN_PASSWORD) == 200


async def test_the_prefix_lengths_are_settings(runtime_factory: RuntimeFactory) -> None:
    runtime = await runtime_factory(sign_in_network_prefix_v4=32, sign_in_network_prefix_v6=128)
    async with api_for(runtime) as api:
        await api.admin_headers()
        assert await guesses(api, [f"198.51.100.{n}" for n in range(1, 6)]) == [401] * 5


async def test_an_address_spraying_accounts_waits_and_its_neighbours_do_not(
    runtime_factory: RuntimeFactory,
) -> None:
    """At any accounts an IPv4 address counts alone: a neighbour trying made-up accounts does not
    keep the others of its /24 out, an account's owner with the right password included."""
    runtime = await runtime_factory(sign_in_failures_per_address=5, sign_in_limit_per_address="8/minute")
    async with api_for(runtime) as api:
        await api.admin_headers()  # from 203.0.113.7
        async with client_at(runtime, "203.0.113.200") as sprayer:
            statuses = [await sign_in_from(sprayer, f"user-{n}", GUESS) for n in range(9)]
        assert statuses == [401] * 5 + [429] * 4, statuses
        async with client_at(runtime, "203.0.113.201") as neighbour:
            assert await sign_in_from(neighbour, "nobody", GUESS) == 401, "a neighbour is checked"
        assert (
            await api.client.post(
                "/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
        ).status_code == 200, "the owner, in the sprayer's /24"


async def test_addresses_of_one_ipv6_network_spraying_accounts_share_its_cap(
    runtime_factory: RuntimeFactory,
) -> None:
    runtime = await runtime_factory(sign_in_failures_per_address=5)
    async with api_for(runtime):
        statuses = []
        for n in range(7):
            async with client_at(runtime, f"2001:db8:1:2::{n + 1:x}") as sprayer:
                statuses.append(await sign_in_from(sprayer, f"user-{n}", GUESS))
        assert statuses == [401] * 5 + [429] * 2, statuses


async def trip_the_account_wide_count(api: Api, free: int) -> None:
    """Three failures (the free ones) from each of enough networks, none of them waiting alone."""
    networks = -(-free // FREE) + 1
    for network in range(networks):
        await guesses(api, [f"203.0.{network + 10}.{n + 1}" for n in range(FREE)])
    async with client_at(api.runtime, "192.0.2.250") as stranger:
        assert await sign_in_from(stranger, "admin", ADMIN_PASSWORD) == 429, "the account waits"


async def test_the_owner_signs_in_from_a_network_they_used_lately_while_the_account_waits(
    runtime_factory: RuntimeFactory,
) -> None:
    runtime = await runtime_factory(sign_in_failures_per_account=8)
    async with api_for(runtime) as api:
        await api.admin_headers()  # from 203.0.113.7: a known network from now on
        await trip_the_account_wide_count(api, 8)
        async with client_at(runtime, "203.0.113.99") as office:
            assert await sign_in_from(office, "admin", ADMIN_PASSWORD) == 200, "another address, same /24"
        assert (
            await api.client.post("/api/v1/auth/sign-in", json={"username": "admin", "password": GUESS})
        ).status_code == 401, "a wrong password from there is still checked, and counted there"
        async with client_at(runtime, "192.0.2.251") as hotel:
            assert await sign_in_from(hotel, "admin", ADMIN_PASSWORD) == 429, "a new network still waits"

        async with runtime.database.transaction() as session:
            await session.execute(update(SignInNetwork).values(last_sign_in_at=utcnow() - timedelta(days=31)))
        async with client_at(runtime, "203.0.113.98") as office:
            assert await sign_in_from(office, "admin", ADMIN_PASSWORD) == 429, (
                "a network not used for longer than sign_in_known_network_days is no longer known"
            )


async def test_a_valid_second_factor_signs_in_while_the_account_waits(
    runtime_factory: RuntimeFactory,
) -> None:
    runtime = await runtime_factory(sign_in_failures_per_account=8, sign_in_known_network_days=0)
    async with api_for(runtime) as api:
        secret, recovery = await enrol(api, await api.admin_headers())
        await trip_the_account_wide_count(api, 8)
        async with client_at(runtime, "192.0.2.1") as phone:
            body = {"username": "admin", "password": ADMIN_PASSWORD}
            no_code = await phone.post("/api/v1/auth/sign-in", json=body)
            assert no_code.status_code == 429
            wrong_code = await phone.post("/api/v1/auth/sign-in", json={**body, "totp_code": "000000"})
            assert wrong_code.status_code == 429
            signed_in = await phone.post(
                "/api/v1/auth/sign-in", json={**body, "totp_code": code_at(secret, 1)}
            )
            assert signed_in.status_code == 200, signed_in.text
        async with client_at(runtime, "192.0.2.2") as laptop:
            wrong_password = await laptop.post(
                "/api/v1/auth/sign-in",
                json={"username": "admin", "password": GUESS, "recovery_code": recovery[0]},
            )
            assert wrong_password.status_code == 401, "the code lets the password be checked, not skipped"
            recovered = await laptop.post("/api/v1/auth/sign-in", json={**body, "recovery_code": recovery[0]})
            assert recovered.status_code == 200, "the recovery code was not used up by the wrong password"


async def test_an_account_remembers_its_last_networks(runtime_factory: RuntimeFactory) -> None:
    runtime = await runtime_factory(sign_in_limit_per_account="100/minute")
    async with api_for(runtime) as api:
        await api.admin_headers()
        for network in range(8):
            async with client_at(runtime, f"198.51.{network}.7") as client:
                assert await sign_in_from(client, "admin", ADMIN_PASSWORD) == 200
        async with runtime.database.session() as session:
            networks = (await session.scalars(select(SignInNetwork.network))).all()
        assert sorted(networks) == sorted(f"198.51.{n}.0/24" for n in range(3, 8))

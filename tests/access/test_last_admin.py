"""Someone must always be able to manage users: the last enabled holder of users:manage cannot be
deleted, disabled or demoted, not even by two administrators removing each other at once."""

from __future__ import annotations

import asyncio
from functools import partial

import httpx2
import pytest

from fleetkeeper.access import service
from fleetkeeper.access.auth import principal_from_claims
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.core.errors import ConflictError
from tests.conftest import Api

ADMIN_ROLE = [{"role": "admin"}]


async def user_id(api: Api, headers: dict[str, str]) -> str:
    me = await api.client.get("/api/v1/me", headers=headers)
    return str(me.json()["user"]["id"])


def assert_last_administrator(response: httpx2.Response) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "last_administrator"
    assert "users:manage" in response.json()["detail"], "the message says what to do instead"


async def test_the_last_administrator_cannot_demote_themselves(api: Api) -> None:
    admin = await api.admin_headers()
    me = await user_id(api, admin)
    demoted = await api.client.put(f"/api/v1/users/{me}/roles", json=[{"role": "read-only"}], headers=admin)
    assert_last_administrator(demoted)
    unassigned = await api.client.put(f"/api/v1/users/{me}/roles", json=[], headers=admin)
    assert_last_administrator(unassigned)
    assert (await api.client.get("/api/v1/users", headers=admin)).status_code == 200, "nothing changed"

    await api.create_user("second-admin", "tulip-orbit-canyon-7", roles=ADMIN_ROLE)
    allowed = await api.client.put(f"/api/v1/users/{me}/roles", json=[{"role": "read-only"}], headers=admin)
    assert allowed.status_code == 200, "another administrator remains"


async def test_a_custom_role_cannot_take_users_manage_from_the_last_holder(api: Api) -> None:
    admin = await api.admin_headers()
    keepers = [{"permission": "users:manage"}, {"permission": "audit:read"}]
    created = await api.client.post(
        "/api/v1/roles", json={"name": "keepers", "grants": keepers}, headers=admin
    )
    assert created.status_code == 201, created.text
    keeper = await api.create_user("keeper", "tulip-orbit-canyon-7", roles=[{"role": "keepers"}])
    me = await user_id(api, admin)
    stepped_down = await api.client.put(f"/api/v1/users/{me}/roles", json=[], headers=admin)
    assert stepped_down.status_code == 200, "keeper still manages users"

    narrowed = await api.client.put(
        "/api/v1/roles/keepers", json={"grants": [{"permission": "audit:read"}]}, headers=keeper
    )
    assert_last_administrator(narrowed)
    keeper_id = await user_id(api, keeper)
    assert_last_administrator(
        await api.client.put(f"/api/v1/users/{keeper_id}/roles", json=[], headers=keeper)
    )


async def test_a_disabled_administrator_does_not_count(api: Api) -> None:
    admin = await api.admin_headers()
    other = await api.create_user("other-admin", "tulip-orbit-canyon-7", roles=ADMIN_ROLE)
    other_id = await user_id(api, other)
    disabled = await api.client.patch(f"/api/v1/users/{other_id}", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200
    me = await user_id(api, admin)
    assert_last_administrator(await api.client.put(f"/api/v1/users/{me}/roles", json=[], headers=admin))


async def principal_of(api: Api, headers: dict[str, str]) -> Principal:
    """The caller as a route sees it once authenticated: both removals below are past that point."""
    claims = await api.runtime.keyring.verify_access_token(headers["authorization"].split()[1])
    return await principal_from_claims(api.runtime, claims, "203.0.113.7")


REMOVALS = {
    "delete": service.delete_user,
    "disable": partial(service.set_user_disabled, disabled=True),
}


@pytest.mark.parametrize("removal", sorted(REMOVALS))
async def test_two_administrators_removing_each_other_at_once_leave_one(api: Api, removal: str) -> None:
    remove = REMOVALS[removal]
    admin = await api.admin_headers()
    other = await api.create_user("rival", "tulip-orbit-canyon-7", roles=ADMIN_ROLE)
    me, rival = await principal_of(api, admin), await principal_of(api, other)
    database = api.runtime.database
    outcomes = await asyncio.gather(
        remove(database, me, rival.user_id), remove(database, rival, me.user_id), return_exceptions=True
    )
    refused = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(refused) == 1, outcomes
    assert isinstance(refused[0], ConflictError), refused[0]
    assert refused[0].code == "last_administrator"
    async with database.session() as session:
        left = [
            user.username
            for user in await service.list_users(session, limit=100, after=None)
            if not user.is_disabled
            and (await service.user_grants(session, user.id)).allows(Permission.USERS_MANAGE)
        ]
    assert len(left) == 1, left

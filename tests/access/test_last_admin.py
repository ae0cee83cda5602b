"""Someone must always be able to do everything: the last administrator (an enabled user whose
roles grant every permission, unscoped) cannot be deleted, disabled or demoted, not even by two
administrators removing each other at once, nor by the identity provider; and someone at the
server's machine can make one again."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from sqlalchemy import delete, select
from structlog.testing import capture_logs

from fleetkeeper.access import service
from fleetkeeper.access.auth import principal_from_claims
from fleetkeeper.access.models import RoleAssignment
from fleetkeeper.access.permissions import GrantSet, Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.core.errors import ConflictError
from fleetkeeper.server.runtime import Runtime
from tests.access.oidc import OidcProvider, complete_login
from tests.access.test_oidc_signin import CALLBACK, provider
from tests.conftest import Api, RuntimeFactory, api_for, bearer, run_fleetkeeper_async
from tests.helpers.access import client_at

__all__ = ["provider"]  # the session's identity provider, a fixture of test_oidc_signin

ADMIN_ROLE = [{"role": "admin"}]


async def user_id(api: Api, headers: dict[str, str]) -> str:
    me = await api.client.get("/api/v1/me", headers=headers)
    return str(me.json()["user"]["id"])


def assert_last_administrator(response: httpx2.Response) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "last_administrator"
    detail = response.json()["detail"]
    assert "admin role" in detail, "the message says what to do instead"
    assert "fleetkeeper users grant-admin" in detail, "and what to do when nobody can"


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


async def test_a_custom_role_with_every_permission_makes_an_administrator(api: Api) -> None:
    admin = await api.admin_headers()
    everything = [{"permission": permission.value} for permission in Permission]
    created = await api.client.post(
        "/api/v1/roles", json={"name": "keepers", "grants": everything}, headers=admin
    )
    assert created.status_code == 201, created.text
    keeper = await api.create_user("keeper", "tulip-orbit-canyon-7", roles=[{"role": "keepers"}])
    me = await user_id(api, admin)
    stepped_down = await api.client.put(f"/api/v1/users/{me}/roles", json=[], headers=admin)
    assert stepped_down.status_code == 200, "keeper holds every permission everywhere"

    narrowed = await api.client.put("/api/v1/roles/keepers", json={"grants": everything[:-1]}, headers=keeper)
    assert_last_administrator(narrowed)
    scoped = [{"permission": "devices:read", "scopes": ["plant-3"]}, *everything[1:]]
    assert everything[0]["permission"] == "devices:read"
    assert_last_administrator(
        await api.client.put("/api/v1/roles/keepers", json={"grants": scoped}, headers=keeper)
    )
    keeper_id = await user_id(api, keeper)
    assert_last_administrator(
        await api.client.put(
            f"/api/v1/users/{keeper_id}/roles",
            json=[{"role": "keepers", "device_groups": ["plant-3"]}],
            headers=keeper,
        )
    )
    assert_last_administrator(
        await api.client.put(f"/api/v1/users/{keeper_id}/roles", json=[], headers=keeper)
    )


async def test_someone_who_only_manages_users_is_no_administrator(api: Api) -> None:
    """users:manage alone cannot give the admin role back (it grants more than they hold): if they
    were the last to count, nobody could ever hold the other permissions again."""
    admin = await api.admin_headers()
    created = await api.client.post(
        "/api/v1/roles", json={"name": "helpdesk", "grants": [{"permission": "users:manage"}]}, headers=admin
    )
    assert created.status_code == 201, created.text
    helpdesk = await api.create_user("hd", "tulip-orbit-canyon-7", roles=[{"role": "helpdesk"}])
    me = await user_id(api, admin)
    assert_last_administrator(await api.client.put(f"/api/v1/users/{me}/roles", json=[], headers=admin))
    assert_last_administrator(
        await api.client.put(f"/api/v1/users/{me}/roles", json=[{"role": "helpdesk"}], headers=admin)
    )
    narrowed = await api.client.put(
        f"/api/v1/users/{me}/roles", json=[{"role": "admin", "device_groups": ["plant-3"]}], headers=admin
    )
    assert_last_administrator(narrowed)
    assert (await api.client.get(f"/api/v1/users/{me}", headers=admin)).json()["roles"] == ["admin"]
    hd_id = await user_id(api, helpdesk)
    assert (
        await api.client.patch(f"/api/v1/users/{hd_id}", json={"disabled": True}, headers=admin)
    ).status_code == 200, "a user manager may go: an administrator remains"


async def test_an_api_token_does_not_change_its_owners_roles(api: Api) -> None:
    admin = await api.admin_headers()
    await api.create_user("second-admin", "tulip-orbit-canyon-7", roles=ADMIN_ROLE)
    token = await api.client.post("/api/v1/me/tokens", json={"name": "everything"}, headers=admin)
    assert token.status_code == 201, token.text
    me = await user_id(api, admin)
    refused = await api.client.put(
        f"/api/v1/users/{me}/roles", json=[{"role": "read-only"}], headers=bearer(token.json()["secret"])
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "session_required"
    assert (await api.client.get(f"/api/v1/users/{me}", headers=admin)).json()["roles"] == ["admin"]
    changed = await api.client.put(f"/api/v1/users/{me}/roles", json=[{"role": "read-only"}], headers=admin)
    assert changed.status_code == 200, "from a session, one's own roles change as before"


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
            and (await service.user_grants(session, user.id)).covers(GrantSet.everything())
        ]
    assert len(left) == 1, left


# --- the identity provider --------------------------------------------------------------------

SSO_MAPPING = {"fleet-admins": ["admin"], "fleet-readers": ["read-only"]}


async def sso_runtime(
    runtime_factory: RuntimeFactory, provider: OidcProvider, mapping: dict[str, list[str]]
) -> Runtime:
    return await runtime_factory(
        oidc_issuer=provider.issuer,
        oidc_client_id=provider.client_id,
        oidc_client_secret=provider.client_secret,
        oidc_redirect_url=CALLBACK,
        oidc_role_mapping=mapping,
    )


async def sso_sign_in(client: httpx2.AsyncClient, username: str, password: str) -> dict[str, str]:
    login = await client.get("/api/v1/auth/oidc/login")
    assert login.status_code == 302, login.text
    returned = await complete_login(login.headers["location"], username, password)
    tokens = await client.get("/api/v1/auth/oidc/callback?" + urlsplit(returned).query)
    assert tokens.status_code == 200, tokens.text
    return bearer(tokens.json())


async def test_a_change_at_the_identity_provider_does_not_remove_the_last_administrator(
    runtime_factory: RuntimeFactory, provider: OidcProvider
) -> None:
    before = await sso_runtime(runtime_factory, provider, SSO_MAPPING)
    async with api_for(before) as api:
        alice = await sso_sign_in(api.client, "alice", "alice-password")
        first_admin = await user_id(api, await api.admin_headers())
        assert (await api.client.delete(f"/api/v1/users/{first_admin}", headers=alice)).status_code == 204
        alice_id = await user_id(api, alice)

    # Alice's group no longer maps to the admin role: she is the last administrator, so she keeps it.
    after = await sso_runtime(runtime_factory, provider, {"fleet-admins": ["read-only"]})
    async with client_at(after, "203.0.113.7") as client:
        with capture_logs() as logs:
            kept = await sso_sign_in(client, "alice", "alice-password")
        me = (await client.get("/api/v1/me", headers=kept)).json()
        assert me["user"]["roles"] == ["admin"], "signed in, still an administrator"
        async with after.database.session() as session:
            records = (
                await session.scalars(select(AuditRecord).where(AuditRecord.action == "user.roles_kept"))
            ).all()
        assert [(r.object_id, r.outcome) for r in records] == [(alice_id, "denied")]
        details = json.loads(records[0].details)
        assert details["reason"] == "last_administrator"
        assert details["roles_from_provider"] == ["read-only"]
        assert details["roles"] == ["admin"]
        warnings = [line for line in logs if line["log_level"] == "warning"]
        assert [line.get("code") for line in warnings] == ["last_administrator"], logs
        assert "last administrator" in warnings[0]["event"]

        # Once another administrator exists, her roles follow the provider again.
        created = await client.post(
            "/api/v1/users",
            json={"username": "second-admin", "password": "tulip-orbit-canyon-7", "roles": ADMIN_ROLE},
            headers=kept,
        )
        assert created.status_code == 201, created.text
        again = await sso_sign_in(client, "alice", "alice-password")
        assert (await client.get("/api/v1/me", headers=again)).json()["user"]["roles"] == ["read-only"]


# --- recovery at the server's machine ---------------------------------------------------------


async def test_the_server_console_makes_an_administrator_again(api: Api, tmp_path: Path) -> None:
    """For a database without one (restored from before the rule, say): users grant-admin."""
    admin = await api.admin_headers()
    helpdesk = await api.client.post(
        "/api/v1/roles", json={"name": "helpdesk", "grants": [{"permission": "users:manage"}]}, headers=admin
    )
    assert helpdesk.status_code == 201
    hd = await api.create_user("hd", "tulip-orbit-canyon-7", roles=[{"role": "helpdesk"}])
    hd_id = await user_id(api, hd)
    async with api.runtime.database.transaction() as session:  # as a database restored from before
        await session.execute(delete(RoleAssignment).where(RoleAssignment.user_id != hd_id))

    command = ("--database-url", api.runtime.database.url, "--data-dir", str(tmp_path))
    result = await run_fleetkeeper_async("users", "grant-admin", "HD", *command)
    assert result.returncode == 0, result.stderr
    assert "hd now holds the admin role" in result.stdout
    roles = await api.client.get(f"/api/v1/users/{hd_id}", headers=hd)
    assert roles.json()["roles"] == ["admin", "helpdesk"]
    async with api.runtime.database.session() as session:
        record = await session.scalar(select(AuditRecord).where(AuditRecord.action == "user.admin_granted"))
    assert record is not None
    assert (record.actor_kind, record.object_id) == ("system", hd_id)
    assert json.loads(record.details) == {"via": "command line", "username": "hd", "enabled": False}

    again = await run_fleetkeeper_async("users", "grant-admin", "hd", *command)
    assert again.returncode == 0, again.stderr
    assert "already" in again.stdout
    unknown = await run_fleetkeeper_async("users", "grant-admin", "nobody", *command)
    assert unknown.returncode == 1
    assert "user_not_found" in unknown.stderr


async def test_granting_the_admin_role_at_the_console_enables_the_account(api: Api, tmp_path: Path) -> None:
    admin = await api.admin_headers()
    await api.create_user("jane", "tulip-orbit-canyon-7")
    listed = (await api.client.get("/api/v1/users", headers=admin)).json()["items"]
    jane_id = next(user["id"] for user in listed if user["username"] == "jane")
    assert (
        await api.client.patch(f"/api/v1/users/{jane_id}", json={"disabled": True}, headers=admin)
    ).status_code == 200
    command = ("--database-url", api.runtime.database.url, "--data-dir", str(tmp_path))
    result = await run_fleetkeeper_async("users", "grant-admin", "jane", *command)
    assert result.returncode == 0, result.stderr
    assert "enabled again" in result.stdout
    shown = (await api.client.get(f"/api/v1/users/{jane_id}", headers=admin)).json()
    assert (shown["is_disabled"], shown["roles"]) == (False, ["admin"])

"""Single sign-on end to end against a real OpenID provider: PKCE, id_token checks, role mapping,
users created at first sign-in, and the ways a callback can be abused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from sqlalchemy import select

from fleetkeeper.access.models import User
from fleetkeeper.server.app import create_management_app
from tests.access.conftest import OidcProviderFactory
from tests.access.oidc import OidcProvider, complete_login
from tests.conftest import Api, RuntimeFactory, api_for, bearer
from tests.helpers.access import age_sessions

CALLBACK = "http://testserver/api/v1/auth/oidc/callback"


@pytest.fixture(scope="session")
def provider(oidc_provider_factory: OidcProviderFactory) -> OidcProvider:
    return oidc_provider_factory(CALLBACK)


@pytest.fixture
async def sso_api(runtime_factory: RuntimeFactory, provider: OidcProvider) -> AsyncIterator[Api]:
    runtime = await runtime_factory(
        oidc_issuer=provider.issuer,
        oidc_client_id=provider.client_id,
        oidc_client_secret=provider.client_secret,
        oidc_redirect_url=CALLBACK,
        oidc_role_mapping={"fleet-admins": ["admin"], "fleet-readers": ["read-only"]},
    )
    async with api_for(runtime) as api:
        yield api


async def start(api: Api) -> str:
    response = await api.client.get("/api/v1/auth/oidc/login")
    assert response.status_code == 302
    location = response.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [CALLBACK]
    assert query["state"][0]
    assert query["nonce"][0]
    return location


async def callback(api: Api, callback_url: str) -> dict[str, object]:
    response = await api.client.get("/api/v1/auth/oidc/callback?" + urlsplit(callback_url).query)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_sign_in_creates_the_user_with_mapped_roles(sso_api: Api) -> None:
    status = (await sso_api.client.get("/api/v1/auth/oidc")).json()
    assert status == {"enabled": True, "login_url": "/api/v1/auth/oidc/login"}

    tokens = await callback(sso_api, await complete_login(await start(sso_api), "alice", "alice-password"))
    me = (await sso_api.client.get("/api/v1/me", headers=bearer(tokens))).json()
    assert me["user"]["username"] == "alice"
    assert me["user"]["auth_source"] == "oidc"
    assert me["user"]["email"] == "alice@example.test"
    assert me["user"]["roles"] == ["admin"]
    assert me["auth_method"] == "oidc"
    assert me["pending_actions"] == []
    assert (await sso_api.client.get("/api/v1/users", headers=bearer(tokens))).status_code == 200

    bob = await callback(sso_api, await complete_login(await start(sso_api), "bob", "bob-password"))
    bob_me = (await sso_api.client.get("/api/v1/me", headers=bearer(bob))).json()
    assert bob_me["user"]["roles"] == ["read-only"]
    assert (await sso_api.client.get("/api/v1/users", headers=bearer(bob))).status_code == 403

    # A second sign-in finds the same account, linked by issuer and subject.
    again = await callback(sso_api, await complete_login(await start(sso_api), "alice", "alice-password"))
    assert (await sso_api.client.get("/api/v1/me", headers=bearer(again))).json()["user"]["id"] == me["user"][
        "id"
    ]
    async with sso_api.runtime.database.session() as session:
        users = (await session.scalars(select(User).where(User.auth_source == "oidc"))).all()
    assert sorted(user.username for user in users) == ["alice", "bob"]
    assert all(user.password_hash is None for user in users)


async def test_sso_user_cannot_use_a_password(sso_api: Api) -> None:
    await callback(sso_api, await complete_login(await start(sso_api), "bob", "bob-password"))
    response = await sso_api.client.post(
        "/api/v1/auth/sign-in", json={"username": "bob", "password": "bob-password"}
    )
    assert response.status_code == 401


async def test_a_callback_is_used_once(sso_api: Api) -> None:
    callback_url = await complete_login(await start(sso_api), "alice", "alice-password")
    await callback(sso_api, callback_url)
    replay = await sso_api.client.get("/api/v1/auth/oidc/callback?" + urlsplit(callback_url).query)
    assert replay.status_code == 401
    assert replay.json()["code"] == "oidc_sign_in_failed"


async def test_forged_state_and_provider_errors_are_refused(sso_api: Api) -> None:
    callback_url = await complete_login(await start(sso_api), "alice", "alice-password")
    query = parse_qs(urlsplit(callback_url).query)
    forged = await sso_api.client.get(
        "/api/v1/auth/oidc/callback?" + urlencode({"code": query["code"][0], "state": "not-ours"})
    )
    assert forged.status_code == 401
    error = await sso_api.client.get("/api/v1/auth/oidc/callback?error=access_denied&state=x")
    assert error.status_code == 401
    assert "access_denied" in error.json()["detail"]
    missing = await sso_api.client.get("/api/v1/auth/oidc/callback")
    assert missing.status_code == 401


async def test_a_code_for_another_login_does_not_match_its_verifier(sso_api: Api) -> None:
    first = parse_qs(urlsplit(await complete_login(await start(sso_api), "alice", "alice-password")).query)
    second_login = await start(sso_api)
    second_state = parse_qs(urlsplit(second_login).query)["state"][0]
    # The first login's code presented with the second login's state: PKCE verifier mismatch.
    swapped = await sso_api.client.get(
        "/api/v1/auth/oidc/callback?" + urlencode({"code": first["code"][0], "state": second_state})
    )
    assert swapped.status_code == 401


async def test_disabled_sso_user_is_refused(sso_api: Api) -> None:
    tokens = await callback(sso_api, await complete_login(await start(sso_api), "bob", "bob-password"))
    bob_id = (await sso_api.client.get("/api/v1/me", headers=bearer(tokens))).json()["user"]["id"]
    admin = await sso_api.admin_headers()
    await sso_api.client.patch(f"/api/v1/users/{bob_id}", json={"disabled": True}, headers=admin)
    response = await sso_api.client.get(
        "/api/v1/auth/oidc/callback?"
        + urlsplit(await complete_login(await start(sso_api), "bob", "bob-password")).query
    )
    assert response.status_code == 401
    assert response.json()["code"] == "account_disabled"


async def test_without_configuration_sso_is_off(api: Api) -> None:
    assert (await api.client.get("/api/v1/auth/oidc")).json() == {"enabled": False, "login_url": None}
    assert (await api.client.get("/api/v1/auth/oidc/login")).json()["code"] == "oidc_not_configured"


async def test_a_callback_from_another_browser_is_refused(sso_api: Api) -> None:
    """The state is bound to the browser that started the sign-in (a cookie): a code and state
    leaked or planted into another browser do not sign that browser in."""
    callback_url = await complete_login(await start(sso_api), "alice", "alice-password")
    transport = httpx2.ASGITransport(app=create_management_app(sso_api.runtime))
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as other_browser:
        response = await other_browser.get("/api/v1/auth/oidc/callback?" + urlsplit(callback_url).query)
    assert response.status_code == 401
    assert "another browser" in response.json()["detail"]
    assert (
        await sso_api.client.get("/api/v1/auth/oidc/callback?" + urlsplit(callback_url).query)
    ).status_code == 200


async def test_an_sso_account_signs_in_again_to_create_an_api_token(sso_api: Api) -> None:
    """It has no password here: after a while, only a new sign-in at the provider proves it."""
    tokens = await callback(sso_api, await complete_login(await start(sso_api), "bob", "bob-password"))
    fresh = await sso_api.client.post("/api/v1/me/tokens", json={"name": "ci"}, headers=bearer(tokens))
    assert fresh.status_code == 201, fresh.text
    await age_sessions(sso_api, 11)
    stale = await sso_api.client.post("/api/v1/me/tokens", json={"name": "cd"}, headers=bearer(tokens))
    assert stale.status_code == 403, stale.text
    assert stale.json()["code"] == "reauthentication_required"
    assert "sign in again" in stale.json()["detail"]
    assert "password" not in stale.json()["detail"], "there is no password to send"
    again = await callback(sso_api, await complete_login(await start(sso_api), "bob", "bob-password"))
    done = await sso_api.client.post("/api/v1/me/tokens", json={"name": "cd"}, headers=bearer(again))
    assert done.status_code == 201, done.text

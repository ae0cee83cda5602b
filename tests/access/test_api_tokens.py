"""Personal API tokens: shown once, hashed at rest, a subset of their owner's permissions."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from fleetkeeper.access.models import ApiToken
from fleetkeeper.core.db import utcnow
from tests.conftest import Api, bearer


async def test_token_is_shown_once_and_hashed(api: Api) -> None:
    admin = await api.admin_headers()
    created = await api.client.post(
        "/api/v1/me/tokens",
        json={"name": "ci", "expires_in_days": 7, "grants": [{"permission": "audit:read"}]},
        headers=admin,
    )
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("fkpat.")
    listed = await api.client.get("/api/v1/me/tokens", headers=admin)
    assert secret not in listed.text
    assert listed.json()[0]["grants"] == [{"permission": "audit:read", "scopes": None}]
    async with api.runtime.database.session() as session:
        stored = (await session.scalars(select(ApiToken))).one()
    assert secret.rsplit(".", 1)[1] not in stored.token_hash

    headers = bearer(secret)
    assert (await api.client.get("/api/v1/me", headers=headers)).json()["auth_method"] == "api_token"
    users = await api.client.get("/api/v1/users", headers=headers)
    assert users.status_code == 403, "the token holds audit:read only, not its owner's users:manage"
    no_chain = await api.client.post("/api/v1/me/tokens", json={"name": "child"}, headers=headers)
    assert no_chain.status_code == 403
    assert no_chain.json()["code"] == "session_required"


async def test_token_cannot_exceed_its_owner(api: Api) -> None:
    reader = await api.create_user("reader", "tulip-orbit-canyon-7", roles=[{"role": "read-only"}])
    wider = await api.client.post(
        "/api/v1/me/tokens", json={"name": "x", "grants": [{"permission": "users:manage"}]}, headers=reader
    )
    assert wider.status_code == 403
    assert wider.json()["code"] == "cannot_grant_beyond_own"
    narrower = await api.client.post(
        "/api/v1/me/tokens",
        json={"name": "y", "grants": [{"permission": "devices:read", "scopes": ["plant-3"]}]},
        headers=reader,
    )
    assert narrower.status_code == 201
    bad = await api.client.post(
        "/api/v1/me/tokens", json={"name": "z", "grants": [{"permission": "devices:explode"}]}, headers=reader
    )
    assert bad.status_code == 422


async def test_token_loses_what_its_owner_loses(api: Api) -> None:
    admin = await api.admin_headers()
    ops = await api.create_user("ops", "tulip-orbit-canyon-7", roles=[{"role": "admin"}])
    token = (await api.client.post("/api/v1/me/tokens", json={"name": "ops"}, headers=ops)).json()["secret"]
    assert (await api.client.get("/api/v1/users", headers=bearer(token))).status_code == 200
    ops_id = (await api.client.get("/api/v1/me", headers=ops)).json()["user"]["id"]
    demoted = await api.client.put(
        f"/api/v1/users/{ops_id}/roles", json=[{"role": "read-only"}], headers=admin
    )
    assert demoted.status_code == 200
    assert (await api.client.get("/api/v1/users", headers=bearer(token))).status_code == 403


async def test_revoked_and_expired_tokens_stop_working(api: Api) -> None:
    admin = await api.admin_headers()
    one = (await api.client.post("/api/v1/me/tokens", json={"name": "one"}, headers=admin)).json()
    two = (await api.client.post("/api/v1/me/tokens", json={"name": "two"}, headers=admin)).json()
    revoked = await api.client.delete(f"/api/v1/me/tokens/{one['token']['id']}", headers=admin)
    assert revoked.status_code == 204
    response = await api.client.get("/api/v1/me", headers=bearer(one["secret"]))
    assert response.json()["code"] == "token_revoked"
    async with api.runtime.database.transaction() as session:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == two["token"]["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    response = await api.client.get("/api/v1/me", headers=bearer(two["secret"]))
    assert response.json()["code"] == "token_expired"
    wrong_secret = two["secret"][:-4] + "AAAA"
    assert (await api.client.get("/api/v1/me", headers=bearer(wrong_secret))).json()[
        "code"
    ] == "invalid_token"


async def test_duplicate_names_and_lifetime_bounds(api: Api) -> None:
    admin = await api.admin_headers()
    assert (await api.client.post("/api/v1/me/tokens", json={"name": "a"}, headers=admin)).status_code == 201
    again = await api.client.post("/api/v1/me/tokens", json={"name": "a"}, headers=admin)
    assert again.json()["code"] == "token_name_taken"
    too_long = await api.client.post(
        "/api/v1/me/tokens", json={"name": "b", "expires_in_days": 1000}, headers=admin
    )
    assert too_long.status_code == 422


async def test_tokens_wait_for_pending_actions_too(api: Api) -> None:
    admin = await api.admin_headers()
    reader = await api.create_user("r", "tulip-orbit-canyon-7", roles=[{"role": "read-only"}])
    token = (await api.client.post("/api/v1/me/tokens", json={"name": "t"}, headers=reader)).json()["secret"]
    await api.client.put("/api/v1/access/policy", json={"require_2fa_roles": ["read-only"]}, headers=admin)
    response = await api.client.get("/api/v1/devices", headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["code"] == "second_factor_enrollment_required"

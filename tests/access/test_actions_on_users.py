"""What a user manager does to an account: never a password reset of their own (a token would
turn into a session), and never ending the sessions of an account stronger than theirs."""

from __future__ import annotations

from sqlalchemy import select

from fleetkeeper.access.models import SignInSession
from tests.conftest import Api, bearer
from tests.helpers.users import PASSWORD


async def user_id(api: Api, headers: dict[str, str]) -> str:
    return str((await api.client.get("/api/v1/me", headers=headers)).json()["user"]["id"])


async def live_sessions(api: Api, user: str) -> int:
    async with api.runtime.database.session() as session:
        rows = await session.scalars(
            select(SignInSession).where(SignInSession.user_id == user, SignInSession.revoked_at.is_(None))
        )
        return len(rows.all())


async def test_nobody_resets_their_own_password_not_even_with_a_token(api: Api) -> None:
    admin = await api.admin_headers()
    managers = await api.client.post(
        "/api/v1/roles",
        json={"name": "user-managers", "grants": [{"permission": "users:manage"}]},
        headers=admin,
    )
    assert managers.status_code == 201
    helpdesk = await api.create_user("hd", PASSWORD, roles=[{"role": "user-managers"}])
    for owner in (admin, helpdesk):
        me = await user_id(api, owner)
        created = await api.client.post(
            "/api/v1/me/tokens",
            json={"name": "ops", "grants": [{"permission": "users:manage"}]},
            headers=owner,
        )
        everything = await api.client.post("/api/v1/me/tokens", json={"name": "all"}, headers=owner)
        assert created.status_code == everything.status_code == 201, created.text
        for headers in (bearer(created.json()["secret"]), bearer(everything.json()["secret"]), owner):
            refused = await api.client.post(f"/api/v1/users/{me}/password-reset", headers=headers)
            if refused.json().get("code") == "cannot_administer_stronger_user":
                continue  # a token narrower than its owner: refused before, for that reason
            assert refused.status_code == 409, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["code"] == "cannot_modify_self"
            assert "one_time_password" not in refused.text
            assert "/api/v1/me/password" in refused.json()["detail"], "says how to change it instead"
        assert (await api.client.get("/api/v1/me", headers=owner)).status_code == 200, "sessions stay"
    jane = await api.create_user("jane", PASSWORD)
    reset = await api.client.post(
        f"/api/v1/users/{await user_id(api, jane)}/password-reset", headers=helpdesk
    )
    assert reset.status_code == 200, "someone else's, as before"


async def test_ending_sessions_needs_an_account_no_stronger_than_ones_own(api: Api) -> None:
    admin = await api.admin_headers()
    admin_id = await user_id(api, admin)
    managers = await api.client.post(
        "/api/v1/roles",
        json={"name": "user-managers", "grants": [{"permission": "users:manage"}]},
        headers=admin,
    )
    assert managers.status_code == 201
    helpdesk = await api.create_user("hd", PASSWORD, roles=[{"role": "user-managers"}])
    alive = await live_sessions(api, admin_id)

    refused = await api.client.delete(f"/api/v1/users/{admin_id}/sessions", headers=helpdesk)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "cannot_administer_stronger_user"
    assert await live_sessions(api, admin_id) == alive
    assert (await api.client.get("/api/v1/me", headers=admin)).status_code == 200

    jane = await api.create_user("jane", PASSWORD)
    ended = await api.client.delete(f"/api/v1/users/{await user_id(api, jane)}/sessions", headers=helpdesk)
    assert ended.status_code == 204, "a weaker account's, as before"
    assert (await api.client.get("/api/v1/me", headers=jane)).json()["code"] == "session_ended"
    unknown = await api.client.delete("/api/v1/users/usr_nobody/sessions", headers=helpdesk)
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "user_not_found"


async def test_a_token_does_not_end_its_owners_sessions_through_the_users_routes(api: Api) -> None:
    admin = await api.admin_headers()
    me = await user_id(api, admin)
    created = await api.client.post("/api/v1/me/tokens", json={"name": "everything"}, headers=admin)
    refused = await api.client.delete(
        f"/api/v1/users/{me}/sessions", headers=bearer(created.json()["secret"])
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "session_required"
    assert (await api.client.get("/api/v1/me", headers=admin)).status_code == 200


async def test_user_managers_cannot_widen_their_own_role_or_take_over_stronger_accounts(api: Api) -> None:
    admin = await api.admin_headers()
    await api.client.post(
        "/api/v1/roles", json={"name": "helpdesk", "grants": [{"permission": "users:manage"}]}, headers=admin
    )
    helpdesk = await api.create_user("hd", "tulip-orbit-canyon-7", roles=[{"role": "helpdesk"}])
    widened = await api.client.put(
        "/api/v1/roles/helpdesk",
        json={"grants": [{"permission": p} for p in ("users:manage", "audit:read", "devices:manage")]},
        headers=helpdesk,
    )
    assert widened.status_code == 403
    assert widened.json()["code"] == "cannot_grant_beyond_own"
    admin_id = (await api.client.get("/api/v1/me", headers=admin)).json()["user"]["id"]
    for method, path, body in [
        ("POST", f"/api/v1/users/{admin_id}/password-reset", None),
        ("PATCH", f"/api/v1/users/{admin_id}", {"disabled": True}),
        ("DELETE", f"/api/v1/users/{admin_id}", None),
        ("PUT", f"/api/v1/users/{admin_id}/roles", []),
    ]:
        response = await api.client.request(method, path, json=body, headers=helpdesk)
        assert response.status_code == 403, path
        assert response.json()["code"] == "cannot_administer_stronger_user"
    peer = await api.create_user("peer", "tulip-orbit-canyon-7", roles=[{"role": "helpdesk"}])
    peer_id = (await api.client.get("/api/v1/me", headers=peer)).json()["user"]["id"]
    assert (
        await api.client.post(f"/api/v1/users/{peer_id}/password-reset", headers=helpdesk)
    ).status_code == 200

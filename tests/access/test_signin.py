"""Signing in: the first admin's one-time password, tokens, refresh rotation, sessions, disabling."""

from __future__ import annotations

from sqlalchemy import select

from fleetkeeper.access.models import RefreshToken, User
from fleetkeeper.audit.models import AuditRecord
from tests.conftest import ADMIN_PASSWORD, Api, bearer


async def test_first_admin_must_change_the_one_time_password(api: Api) -> None:
    tokens = await api.sign_in("admin", api.admin_one_time_password)
    assert tokens["pending_actions"] == ["change_password"]
    headers = bearer(tokens)
    blocked = await api.client.get("/api/v1/users", headers=headers)
    assert blocked.status_code == 403
    assert blocked.json()["code"] == "password_change_required"
    me = await api.client.get("/api/v1/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["pending_actions"] == ["change_password"]

    weak = await api.client.post(
        "/api/v1/me/password",
        json={"current_password": api.admin_one_time_password, "new_password": "admin"},
        headers=headers,
    )
    assert weak.status_code == 422
    assert weak.json()["code"] == "weak_password"
    changed = await api.client.post(
        "/api/v1/me/password",
        json={"current_password": api.admin_one_time_password, "new_password": ADMIN_PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 204

    refreshed = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    assert refreshed.json()["pending_actions"] == []
    users = await api.client.get("/api/v1/users", headers=bearer(refreshed.json()))
    assert users.status_code == 200
    assert [user["username"] for user in users.json()["items"]] == ["admin"]
    old_password = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": api.admin_one_time_password}
    )
    assert old_password.status_code == 401


async def test_wrong_password_and_unknown_user_look_the_same_and_are_audited(api: Api) -> None:
    await api.admin_headers()
    wrong = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": "nope-nope-nope"}
    )
    unknown = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "ghost", "password": "nope-nope-nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["code"] == unknown.json()["code"] == "invalid_credentials"
    assert wrong.json()["detail"] == unknown.json()["detail"]
    async with api.runtime.database.session() as session:
        failures = (
            await session.scalars(
                select(AuditRecord).where(
                    AuditRecord.action == "auth.sign_in", AuditRecord.outcome == "failure"
                )
            )
        ).all()
    assert {record.actor_name for record in failures} == {"admin", "ghost"}
    assert all(record.actor_address == "203.0.113.7" for record in failures)
    assert all("nope" not in record.details for record in failures)


async def test_refresh_tokens_rotate_and_a_reused_one_ends_the_session(api: Api) -> None:
    await api.admin_headers()
    first = await api.sign_in("admin", ADMIN_PASSWORD)
    second = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert second.json()["session_id"] == first["session_id"]

    replay = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert replay.json()["code"] == "invalid_refresh_token"
    # The thief's replay ended the session: the legitimate successor no longer works either.
    successor = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": second.json()["refresh_token"]}
    )
    assert successor.status_code == 401
    ended = await api.client.get("/api/v1/me", headers=bearer(second.json()))
    assert ended.status_code == 401
    assert ended.json()["code"] == "session_ended"


async def test_refresh_tokens_are_stored_hashed(api: Api) -> None:
    await api.admin_headers()
    tokens = await api.sign_in("admin", ADMIN_PASSWORD)
    token_id, secret = str(tokens["refresh_token"]).split(".", 1)
    async with api.runtime.database.session() as session:
        stored = await session.get(RefreshToken, token_id)
    assert stored is not None
    assert secret not in stored.token_hash
    assert len(stored.token_hash) == 64


async def test_malformed_refresh_tokens(api: Api) -> None:
    for value in ["", "no-dot", "rft_x.", ".secret", "rft_unknown.secret", "x" * 600]:
        response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": value})
        assert response.status_code in (401, 422), value
        assert response.headers["content-type"] == "application/problem+json"


async def test_sign_out_and_sign_out_everywhere(api: Api) -> None:
    await api.admin_headers()
    one = await api.sign_in("admin", ADMIN_PASSWORD)
    two = await api.sign_in("admin", ADMIN_PASSWORD)
    sessions = await api.client.get("/api/v1/me/sessions", headers=bearer(one))
    current = [s for s in sessions.json() if s["current"]]
    assert len(current) == 1
    assert current[0]["id"] == one["session_id"]

    assert (await api.client.post("/api/v1/auth/sign-out", headers=bearer(one))).status_code == 204
    assert (await api.client.get("/api/v1/me", headers=bearer(one))).status_code == 401
    assert (await api.client.get("/api/v1/me", headers=bearer(two))).status_code == 200
    assert (await api.client.delete("/api/v1/me/sessions", headers=bearer(two))).status_code == 204
    assert (await api.client.get("/api/v1/me", headers=bearer(two))).status_code == 401
    again = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": two["refresh_token"]})
    assert again.status_code == 401


async def test_disabled_user_loses_every_credential_at_once(api: Api) -> None:
    admin = await api.admin_headers()
    jane = await api.create_user("jane", "tulip-orbit-canyon-7", roles=[{"role": "read-only"}])
    jane_tokens = await api.sign_in("jane", "tulip-orbit-canyon-7")
    api_token = await api.client.post("/api/v1/me/tokens", json={"name": "ci"}, headers=jane)
    assert api_token.status_code == 201
    pat = bearer(api_token.json()["secret"])
    assert (await api.client.get("/api/v1/me", headers=pat)).status_code == 200

    users = (await api.client.get("/api/v1/users", headers=admin)).json()["items"]
    jane_id = next(user["id"] for user in users if user["username"] == "jane")
    disabled = await api.client.patch(f"/api/v1/users/{jane_id}", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200
    assert disabled.json()["is_disabled"] is True

    for headers in (jane, pat, bearer(jane_tokens)):
        response = await api.client.get("/api/v1/me", headers=headers)
        assert response.status_code == 401
    refresh = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": jane_tokens["refresh_token"]}
    )
    assert refresh.status_code == 401
    sign_in = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "jane", "password": "tulip-orbit-canyon-7"}
    )
    assert sign_in.status_code == 401


async def test_admin_cannot_disable_or_delete_themselves(api: Api) -> None:
    admin = await api.admin_headers()
    me = (await api.client.get("/api/v1/me", headers=admin)).json()["user"]["id"]
    assert (await api.client.patch(f"/api/v1/users/{me}", json={"disabled": True}, headers=admin)).json()[
        "code"
    ] == "cannot_modify_self"
    assert (await api.client.delete(f"/api/v1/users/{me}", headers=admin)).json()[
        "code"
    ] == "cannot_modify_self"


async def test_created_user_gets_a_one_time_password_shown_once(api: Api) -> None:
    admin = await api.admin_headers()
    created = await api.client.post("/api/v1/users", json={"username": "Ops.Bob"}, headers=admin)
    assert created.status_code == 201
    body = created.json()
    assert body["user"]["username"] == "ops.bob"
    assert body["user"]["must_change_password"] is True
    password = body["one_time_password"]
    shown = await api.client.get(f"/api/v1/users/{body['user']['id']}", headers=admin)
    assert password not in shown.text
    tokens = await api.sign_in("ops.bob", password)
    assert tokens["pending_actions"] == ["change_password"]
    duplicate = await api.client.post("/api/v1/users", json={"username": "ops.bob"}, headers=admin)
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "username_taken"
    async with api.runtime.database.session() as session:
        user = await session.scalar(select(User).where(User.username == "ops.bob"))
    assert user is not None
    assert password not in (user.password_hash or "")


async def test_password_reset_ends_sessions(api: Api) -> None:
    admin = await api.admin_headers()
    jane = await api.create_user("jane", "tulip-orbit-canyon-7")
    jane_id = (await api.client.get("/api/v1/me", headers=jane)).json()["user"]["id"]
    reset = await api.client.post(f"/api/v1/users/{jane_id}/password-reset", headers=admin)
    assert reset.status_code == 200
    assert (await api.client.get("/api/v1/me", headers=jane)).status_code == 401
    tokens = await api.sign_in("jane", reset.json()["one_time_password"])
    assert tokens["pending_actions"] == ["change_password"]


async def test_signing_key_rotation_keeps_earlier_tokens_valid(api: Api) -> None:
    admin = await api.admin_headers()
    before = (await api.client.get("/api/v1/auth/jwks")).json()["keys"]
    rotated = await api.client.post("/api/v1/auth/signing-keys/rotate", headers=admin)
    assert rotated.status_code == 200
    after = (await api.client.get("/api/v1/auth/jwks")).json()["keys"]
    assert {key["kid"] for key in after} == {key["kid"] for key in before} | {rotated.json()["kid"]}
    assert all("d" not in key for key in after), "the JWKS holds public keys only"
    assert (await api.client.get("/api/v1/me", headers=admin)).status_code == 200
    fresh = await api.sign_in("admin", ADMIN_PASSWORD)
    assert (await api.client.get("/api/v1/me", headers=bearer(fresh))).status_code == 200

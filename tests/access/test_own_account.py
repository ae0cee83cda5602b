"""Changes to one's own account need a signed-in session, never an API token; turning two-factor
sign-in on and creating an API token need the password or a recent sign-in; an administrator (or
the server's console) can reset someone's lost second factor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetkeeper.access.models import SignInSession
from fleetkeeper.audit.models import AuditRecord
from tests.conftest import ADMIN_PASSWORD, Api, bearer, run_fleetkeeper_async
from tests.helpers.access import age_sessions, code_at, enrol
from tests.helpers.users import PASSWORD

# Every route that changes (or shows the credentials of) the caller's own account.
SESSION_ONLY = [
    ("POST", "/api/v1/me/password", {"current_password": ADMIN_PASSWORD, "new_password": "x" * 20}),
    ("POST", "/api/v1/me/2fa/totp", None),
    ("POST", "/api/v1/me/2fa/totp/confirm", {"code": "123456"}),
    ("POST", "/api/v1/me/2fa/totp/disable", {"password": ADMIN_PASSWORD, "code": "123456"}),
    ("POST", "/api/v1/me/2fa/recovery-codes", {"code": "123456"}),
    ("GET", "/api/v1/me/sessions", None),
    ("DELETE", "/api/v1/me/sessions", None),
    ("DELETE", "/api/v1/me/sessions/ses_x", None),
    ("GET", "/api/v1/me/tokens", None),
    ("POST", "/api/v1/me/tokens", {"name": "child"}),
    ("DELETE", "/api/v1/me/tokens/tok_x", None),
]


async def token_for(api: Api, headers: dict[str, str], grants: list[dict[str, object]]) -> dict[str, str]:
    created = await api.client.post(
        "/api/v1/me/tokens", json={"name": "narrow", "grants": grants}, headers=headers
    )
    assert created.status_code == 201, created.text
    return bearer(created.json()["secret"])


@pytest.mark.parametrize(
    ("method", "path", "body"), SESSION_ONLY, ids=[f"{m} {p}" for m, p, _ in SESSION_ONLY]
)
async def test_an_api_token_cannot_change_its_owners_account(
    api: Api, method: str, path: str, body: dict[str, str] | None
) -> None:
    admin = await api.admin_headers()
    token = await token_for(api, admin, [{"permission": "releases:read"}])
    refused = await api.client.request(method, path, json=body, headers=token)
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "session_required"
    assert "sign in" in refused.json()["detail"]
    assert (await api.client.get("/api/v1/me", headers=token)).status_code == 200, (
        "a token still says who it is"
    )
    assert (await api.client.get("/api/v1/me/sessions", headers=admin)).status_code == 200


async def test_a_token_with_every_permission_cannot_take_over_either(api: Api) -> None:
    admin = await api.admin_headers()
    token = await token_for(api, admin, [{"permission": p} for p in ("users:manage", "audit:read")])
    started = await api.client.post("/api/v1/me/2fa/totp", headers=token)
    assert started.json()["code"] == "session_required"
    async with api.runtime.database.session() as session:
        alive = (await session.scalars(select(SignInSession).where(SignInSession.revoked_at.is_(None)))).all()
    ended = await api.client.delete("/api/v1/me/sessions", headers=token)
    assert ended.status_code == 403
    async with api.runtime.database.session() as session:
        still = (await session.scalars(select(SignInSession).where(SignInSession.revoked_at.is_(None)))).all()
    assert len(still) == len(alive)


async def test_turning_two_factor_on_needs_the_password_unless_just_signed_in(api: Api) -> None:
    jane = await api.create_user("jane", PASSWORD)
    await age_sessions(api, 11)
    started = await api.client.post("/api/v1/me/2fa/totp", headers=jane)
    assert started.status_code == 200
    secret = started.json()["secret"]
    confirm = "/api/v1/me/2fa/totp/confirm"
    without = await api.client.post(confirm, json={"code": code_at(secret, -1)}, headers=jane)
    assert without.status_code == 403, without.text
    assert without.json()["code"] == "reauthentication_required"
    assert "password" in without.json()["detail"]
    wrong = await api.client.post(
        confirm, json={"code": code_at(secret, -1), "password": "not-the-password"}, headers=jane
    )
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "invalid_credentials"
    done = await api.client.post(
        confirm, json={"code": code_at(secret, -1), "password": PASSWORD}, headers=jane
    )
    assert done.status_code == 200, done.text
    assert len(done.json()["recovery_codes"]) == 10


async def test_a_fresh_sign_in_is_proof_enough_to_turn_two_factor_on(api: Api) -> None:
    jane = await api.create_user("jane", PASSWORD)
    await enrol(api, jane)  # confirms with the code alone, minutes after signing in


async def test_creating_an_api_token_needs_the_password_unless_just_signed_in(api: Api) -> None:
    """A stolen session must not mint a token that outlives it and a password change."""
    jane = await api.create_user("jane", PASSWORD, roles=[{"role": "read-only"}])
    await age_sessions(api, 11)
    tokens = "/api/v1/me/tokens"
    without = await api.client.post(tokens, json={"name": "ci"}, headers=jane)
    assert without.status_code == 403, without.text
    assert without.headers["content-type"] == "application/problem+json"
    assert without.json()["code"] == "reauthentication_required"
    assert '"password"' in without.json()["detail"]
    wrong = await api.client.post(tokens, json={"name": "ci", "password": "not-the-password"}, headers=jane)
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "invalid_credentials"
    assert (await api.client.get(tokens, headers=jane)).json() == [], "nothing was created"

    done = await api.client.post(tokens, json={"name": "ci", "password": PASSWORD}, headers=jane)
    assert done.status_code == 201, done.text
    assert PASSWORD not in done.text
    assert (await api.client.get("/api/v1/me", headers=bearer(done.json()["secret"]))).status_code == 200
    async with api.runtime.database.session() as session:
        created = (
            await session.scalars(select(AuditRecord).where(AuditRecord.action == "api_token.created"))
        ).one()
    assert PASSWORD not in created.details
    assert sorted(created.details_object()) == ["expires_at", "grants", "name"]


async def test_a_fresh_sign_in_is_proof_enough_to_create_an_api_token(api: Api) -> None:
    jane = await api.create_user("jane", PASSWORD, roles=[{"role": "read-only"}])
    created = await api.client.post("/api/v1/me/tokens", json={"name": "ci"}, headers=jane)
    assert created.status_code == 201, created.text
    wrong = await api.client.post(
        "/api/v1/me/tokens", json={"name": "cd", "password": "not-the-password"}, headers=jane
    )
    assert wrong.status_code == 403, "a password given is checked, even when none was needed"
    assert wrong.json()["code"] == "invalid_credentials"


async def user_id_of(api: Api, headers: dict[str, str]) -> str:
    return str((await api.client.get("/api/v1/me", headers=headers)).json()["user"]["id"])


async def test_an_administrator_resets_a_lost_second_factor(api: Api) -> None:
    admin = await api.admin_headers()
    jane = await api.create_user("jane", PASSWORD, roles=[{"role": "read-only"}])
    jane_id = await user_id_of(api, jane)
    not_on = await api.client.post(f"/api/v1/users/{jane_id}/2fa/reset", headers=admin)
    assert not_on.status_code == 409
    assert not_on.json()["code"] == "totp_not_enabled"
    secret, recovery = await enrol(api, jane)
    jane_token = await token_for(api, jane, [{"permission": "devices:read"}])

    reset = await api.client.post(f"/api/v1/users/{jane_id}/2fa/reset", headers=admin)
    assert reset.status_code == 204, reset.text
    assert (await api.client.get("/api/v1/me", headers=jane)).json()["code"] == "session_ended"
    assert (await api.client.get("/api/v1/me", headers=jane_token)).status_code == 200, "tokens stay"
    assert (await api.sign_in("jane", PASSWORD))["pending_actions"] == [], "the password alone signs in"
    old_code = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "jane", "password": PASSWORD, "recovery_code": recovery[0]}
    )
    assert old_code.status_code == 200, "a recovery code no longer matters"

    async with api.runtime.database.session() as session:
        records = (
            await session.scalars(select(AuditRecord).where(AuditRecord.action == "user.two_factor_reset"))
        ).all()
    assert [(r.object_id, r.actor_name, r.outcome) for r in records] == [(jane_id, "admin", "success")]
    assert secret not in str(records[0].details)
    assert recovery[1] not in str(records[0].details)

    me = await user_id_of(api, admin)
    own = await api.client.post(f"/api/v1/users/{me}/2fa/reset", headers=admin)
    assert own.status_code == 409
    assert own.json()["code"] == "cannot_modify_self"
    reader = await api.create_user("reader", PASSWORD, roles=[{"role": "read-only"}])
    assert (await api.client.post(f"/api/v1/users/{jane_id}/2fa/reset", headers=reader)).status_code == 403


async def test_a_reset_where_policy_requires_2fa_asks_to_enrol_again(api: Api) -> None:
    admin = await api.admin_headers()
    rel = await api.create_user("rel", PASSWORD, roles=[{"role": "release-manager"}])
    await enrol(api, rel)
    policy = await api.client.put(
        "/api/v1/access/policy", json={"require_2fa_roles": ["release-manager"]}, headers=admin
    )
    assert policy.status_code == 200
    reset = await api.client.post(f"/api/v1/users/{await user_id_of(api, rel)}/2fa/reset", headers=admin)
    assert reset.status_code == 204
    assert (await api.sign_in("rel", PASSWORD))["pending_actions"] == ["enroll_2fa"]


async def test_the_server_console_resets_a_second_factor(api: Api, tmp_path: Path) -> None:
    admin = await api.admin_headers()
    secret, _ = await enrol(api, admin)
    command = ("--database-url", api.runtime.database.url, "--data-dir", str(tmp_path))
    result = await run_fleetkeeper_async("users", "reset-2fa", "ADMIN", *command)
    assert result.returncode == 0, result.stderr
    assert "two-factor sign-in of admin is off" in result.stdout
    assert secret not in result.stdout
    tokens = await api.sign_in("admin", ADMIN_PASSWORD)
    assert tokens["access_token"], "the password alone signs in again"
    assert (await api.client.get("/api/v1/me", headers=admin)).json()["code"] == "session_ended"
    async with api.runtime.database.session() as session:
        record = await session.scalar(
            select(AuditRecord).where(AuditRecord.action == "user.two_factor_reset")
        )
    assert record is not None
    assert record.actor_kind == "system"
    assert json.loads(record.details) == {"via": "command line", "username": "admin"}

    again = await run_fleetkeeper_async("users", "reset-2fa", "admin", *command)
    assert again.returncode == 1
    assert "totp_not_enabled" in again.stderr
    unknown = await run_fleetkeeper_async("users", "reset-2fa", "nobody", *command)
    assert unknown.returncode == 1
    assert "user_not_found" in unknown.stderr

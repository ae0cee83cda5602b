"""TOTP two-factor sign-in, recovery codes, and the policy that requires 2FA for roles."""

from __future__ import annotations

from sqlalchemy import select

from fleetkeeper.access.models import RecoveryCode
from tests.conftest import ADMIN_PASSWORD, Api, bearer
from tests.helpers.access import code_at, enrol


async def test_sign_in_with_totp(api: Api) -> None:
    secret, _ = await enrol(api, await api.admin_headers())
    needs = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert needs.status_code == 401
    assert needs.json()["code"] == "second_factor_required"
    wrong = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD, "totp_code": "123456"}
    )
    assert wrong.json()["code"] == "invalid_second_factor"
    code = code_at(secret)
    tokens = await api.sign_in("admin", ADMIN_PASSWORD, totp_code=code)
    assert tokens["access_token"]
    replay = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD, "totp_code": code}
    )
    assert replay.status_code == 401, "a TOTP code is accepted once"
    assert replay.json()["code"] == "invalid_second_factor"


async def test_recovery_codes_work_once_and_are_stored_hashed(api: Api) -> None:
    _, codes = await enrol(api, await api.admin_headers())
    tokens = await api.sign_in("admin", ADMIN_PASSWORD, recovery_code=codes[0].upper())
    assert tokens["access_token"]
    again = await api.client.post(
        "/api/v1/auth/sign-in",
        json={"username": "admin", "password": ADMIN_PASSWORD, "recovery_code": codes[0]},
    )
    assert again.status_code == 401
    async with api.runtime.database.session() as session:
        stored = (await session.scalars(select(RecoveryCode))).all()
    assert len(stored) == 10
    assert sum(1 for row in stored if row.used_at is not None) == 1
    assert all(code.replace("-", "") not in row.code_hash for row in stored for code in codes)


async def test_regenerating_recovery_codes_invalidates_the_old_ones(api: Api) -> None:
    secret, old = await enrol(api, await api.admin_headers())
    headers = bearer(await api.sign_in("admin", ADMIN_PASSWORD, recovery_code=old[1]))
    fresh = await api.client.post(
        "/api/v1/me/2fa/recovery-codes", json={"code": code_at(secret)}, headers=headers
    )
    assert fresh.status_code == 200
    stale = await api.client.post(
        "/api/v1/auth/sign-in",
        json={"username": "admin", "password": ADMIN_PASSWORD, "recovery_code": old[2]},
    )
    assert stale.status_code == 401
    assert await api.sign_in("admin", ADMIN_PASSWORD, recovery_code=fresh.json()["recovery_codes"][0])


async def test_disable_needs_password_and_code(api: Api) -> None:
    secret, _ = await enrol(api, await api.admin_headers())
    headers = bearer(await api.sign_in("admin", ADMIN_PASSWORD, totp_code=code_at(secret)))
    no_password = await api.client.post(
        "/api/v1/me/2fa/totp/disable",
        json={"password": "wrong-wrong-wrong", "code": code_at(secret, 1)},
        headers=headers,
    )
    assert no_password.status_code == 403
    done = await api.client.post(
        "/api/v1/me/2fa/totp/disable",
        json={"password": ADMIN_PASSWORD, "code": code_at(secret, 1)},
        headers=headers,
    )
    assert done.status_code == 204
    assert await api.sign_in("admin", ADMIN_PASSWORD)


async def test_policy_requires_2fa_for_a_role(api: Api) -> None:
    admin = await api.admin_headers()
    await api.create_user("rel", "tulip-orbit-canyon-7", roles=[{"role": "release-manager"}])
    unknown = await api.client.put(
        "/api/v1/access/policy", json={"require_2fa_roles": ["nope"]}, headers=admin
    )
    assert unknown.status_code == 422
    policy = await api.client.put(
        "/api/v1/access/policy", json={"require_2fa_roles": ["release-manager"]}, headers=admin
    )
    assert policy.json() == {"require_2fa_roles": ["release-manager"]}

    tokens = await api.sign_in("rel", "tulip-orbit-canyon-7")
    assert tokens["pending_actions"] == ["enroll_2fa"]
    headers = bearer(tokens)
    blocked = await api.client.get("/api/v1/me/tokens", headers=headers)
    assert blocked.status_code == 403
    assert blocked.json()["code"] == "second_factor_enrollment_required"
    secret, _ = await enrol(api, headers)
    refreshed = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.json()["pending_actions"] == []
    cannot_disable = await api.client.post(
        "/api/v1/me/2fa/totp/disable",
        json={"password": "tulip-orbit-canyon-7", "code": code_at(secret, 1)},
        headers=bearer(refreshed.json()),
    )
    assert cannot_disable.status_code == 409
    assert cannot_disable.json()["code"] == "second_factor_required_by_policy"


async def test_a_code_outside_ascii_is_a_wrong_code(api: Api) -> None:
    """Not a server error: the code is compared as bytes."""
    headers = await api.admin_headers()
    started = await api.client.post("/api/v1/me/2fa/totp", headers=headers)
    assert started.status_code == 200
    confirmed = await api.client.post(
        "/api/v1/me/2fa/totp/confirm", json={"code": "１２３４５６"}, headers=headers
    )
    assert confirmed.status_code == 403
    await enrol(api, headers)
    refused = await api.client.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD, "totp_code": "12345é"}
    )
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_second_factor"

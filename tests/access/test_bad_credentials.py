"""Hostile and broken credentials and bodies get a clear 4xx problem, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select

from fleetkeeper.access.models import SigningKey
from tests.conftest import ADMIN_PASSWORD, Api, bearer


def b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def valid_claims(api: Api) -> tuple[ECKey, dict[str, Any]]:
    await api.admin_headers()
    tokens = await api.sign_in("admin", ADMIN_PASSWORD)
    payload = json.loads(base64.urlsafe_b64decode(str(tokens["access_token"]).split(".")[1] + "=="))
    async with api.runtime.database.session() as session:
        row = (await session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None)))).one()
    return ECKey.import_key(json.loads(row.private_jwk)), payload


def sign(key: ECKey, claims: dict[str, Any], **header: Any) -> str:
    return jwt.encode(
        {"alg": "ES256", "kid": key.kid, "typ": "at+jwt", **header}, claims, key, algorithms=["ES256"]
    )


async def expect_401(api: Api, token: str, code: str | None = None) -> None:
    response = await api.client.get("/api/v1/me", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    if code:
        assert response.json()["code"] == code


async def test_a_properly_signed_token_works(api: Api) -> None:
    key, claims = await valid_claims(api)
    response = await api.client.get("/api/v1/me", headers=bearer(sign(key, claims)))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJFUzI1NiJ9.e30.",
        "fkpat.",
        "fkpat.tok_x.",
        "fkpat.tok_unknown.secret",
        "x" * 5000,
    ],
)
async def test_malformed_tokens(api: Api, token: str) -> None:
    await expect_401(api, token)


async def test_missing_or_other_schemes(api: Api) -> None:
    for headers in ({}, {"authorization": "Basic YWRtaW46YWRtaW4="}, {"authorization": "Bearer"}):
        response = await api.client.get("/api/v1/me", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthenticated"


async def test_alg_none_is_refused(api: Api) -> None:
    _, claims = await valid_claims(api)
    unsigned = f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(claims)}."
    await expect_401(api, unsigned, "invalid_token")


async def test_hmac_with_the_public_key_is_refused(api: Api) -> None:
    key, claims = await valid_claims(api)
    signing_input = f"{b64({'alg': 'HS256', 'kid': key.kid, 'typ': 'at+jwt'})}.{b64(claims)}"
    mac = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    await expect_401(api, forged, "invalid_token")


async def test_a_key_of_our_own_is_refused(api: Api) -> None:
    key, claims = await valid_claims(api)
    attacker = ECKey.generate_key("P-256", parameters={"kid": key.kid})
    await expect_401(api, sign(attacker, claims), "invalid_token")


async def test_tampered_payload_is_refused(api: Api) -> None:
    key, claims = await valid_claims(api)
    header, _, signature = sign(key, claims).split(".")
    tampered = f"{header}.{b64({**claims, 'sub': 'usr_someone_else'})}.{signature}"
    await expect_401(api, tampered, "invalid_token")


async def test_expired_and_not_yet_valid_tokens(api: Api) -> None:
    key, claims = await valid_claims(api)
    now = int(time.time())
    await expect_401(
        api, sign(key, {**claims, "iat": now - 3600, "nbf": now - 3600, "exp": now - 1800}), "token_expired"
    )
    await expect_401(
        api, sign(key, {**claims, "iat": now, "nbf": now + 3600, "exp": now + 7200}), "token_not_yet_valid"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "someone-else"},
        {"aud": "another-api"},
        {"sid": "ses_not_a_session"},
        {"sub": "usr_unknown"},
        {"pending": "change_password"},
    ],
)
async def test_wrong_claims_are_refused(api: Api, change: dict[str, Any]) -> None:
    key, claims = await valid_claims(api)
    await expect_401(api, sign(key, {**claims, **change}))


async def test_wrong_token_type_is_refused(api: Api) -> None:
    key, claims = await valid_claims(api)
    await expect_401(api, sign(key, claims, typ="JWT"), "invalid_token")


async def test_removing_a_claim_is_refused(api: Api) -> None:
    key, claims = await valid_claims(api)
    for name in ("exp", "sid", "aud", "nbf"):
        await expect_401(api, sign(key, {k: v for k, v in claims.items() if k != name}))


async def test_oversized_body_gets_413(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/auth/sign-in",
        content=b'{"username": "' + b"a" * (2 * 1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_streamed_oversized_body_gets_413(api: Api) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"a" * 65536

    response = await api.client.post(
        "/api/v1/auth/sign-in", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [
        {"username": "admin", "password": "x", "is_admin": True},
        {"username": "admin"},
        {"username": ["admin"], "password": "x"},
        {"username": "admin", "password": "x" * 1000},
    ],
)
async def test_unknown_fields_and_wrong_types_get_422(api: Api, body: dict[str, Any]) -> None:
    response = await api.client.post("/api/v1/auth/sign-in", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"


async def test_not_json_gets_422(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/auth/sign-in", content=b"\xff\xfe not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"

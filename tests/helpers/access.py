"""Accounts as the access tests drive them: a second factor enrolled, sign-ins from other client
addresses, sessions made older than they are."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx2
import pyotp
from sqlalchemy import update

from fleetkeeper.access.models import SignInSession
from fleetkeeper.core.db import utcnow
from fleetkeeper.server.app import create_management_app
from fleetkeeper.server.runtime import Runtime
from tests.conftest import Api

REDIS_URL = os.environ.get("FLEETKEEPER_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


async def age_sessions(api: Api, minutes: int) -> None:
    async with api.runtime.database.transaction() as session:
        await session.execute(update(SignInSession).values(created_at=utcnow() - timedelta(minutes=minutes)))


@asynccontextmanager
async def client_at(runtime: Runtime, address: str) -> AsyncIterator[httpx2.AsyncClient]:
    """The management app reached from another client address than the `api` fixture's."""
    transport = httpx2.ASGITransport(app=create_management_app(runtime), client=(address, 40000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def sign_in_from(client: httpx2.AsyncClient, username: str, password: str) -> int:
    response = await client.post("/api/v1/auth/sign-in", json={"username": username, "password": password})
    return response.status_code


def code_at(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * offset_steps)


async def enrol(api: Api, headers: dict[str, str]) -> tuple[str, list[str]]:
    started = await api.client.post("/api/v1/me/2fa/totp", headers=headers)
    assert started.status_code == 200
    secret = started.json()["secret"]
    uri = urlsplit(started.json()["otpauth_uri"])
    assert uri.scheme == "otpauth"
    assert parse_qs(uri.query)["secret"] == [secret]
    assert parse_qs(uri.query)["issuer"] == ["fleetkeeper"]
    wrong = await api.client.post("/api/v1/me/2fa/totp/confirm", json={"code": "000000"}, headers=headers)
    assert wrong.status_code == 403
    confirmed = await api.client.post(
        "/api/v1/me/2fa/totp/confirm", json={"code": code_at(secret, -1)}, headers=headers
    )
    assert confirmed.status_code == 200
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == 10
    assert len(set(codes)) == 10
    return secret, codes

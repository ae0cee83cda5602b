"""My account over plain HTTP: turning two-factor sign-in on, or creating an API token, a while
after signing in asks for the password again (right after signing in, the sign-in itself is proof
enough: see test_admin.py)."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta

import httpx2
import pyotp

from tests.conftest import RunningServer
from tests.console.conftest import ApiClient
from tests.helpers.console import csrf_token

PASSWORD = "quartz-lantern-meadow-19"


def _signed_in(server: RunningServer, username: str, password: str) -> httpx2.Client:
    http = httpx2.Client(base_url=server.management_url, timeout=30)
    form = http.get("/sign-in")
    answer = http.post(
        "/sign-in", data={"username": username, "password": password, "csrf_token": csrf_token(form.text)}
    )
    assert answer.status_code == 303, answer.text
    return http


def _age_sessions(server: RunningServer, username: str) -> None:
    """As if the user had signed in an hour ago."""
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(server.data_dir / "fleetkeeper.db") as database:
        database.execute(
            "UPDATE sessions SET created_at = ? WHERE user_id = (SELECT id FROM users WHERE username = ?)",
            (an_hour_ago, username),
        )


def test_turning_two_factor_on_long_after_signing_in_asks_for_the_password(
    console_server: RunningServer, admin_api: ApiClient
) -> None:
    admin_api.call("POST", "/api/v1/users", json={"username": "late-enroller", "password": PASSWORD + "-0"})
    first = ApiClient(console_server, "late-enroller", PASSWORD + "-0")
    first.call(
        "POST", "/api/v1/me/password", json={"current_password": PASSWORD + "-0", "new_password": PASSWORD}
    )
    http = _signed_in(console_server, "late-enroller", PASSWORD)
    _age_sessions(console_server, "late-enroller")

    account = http.get("/account")
    started = http.post("/account/2fa/start", data={"csrf_token": csrf_token(account.text)})
    assert started.status_code == 200
    assert 'name="password"' in started.text, "the form asks for the password"
    secret = re.search(r'data-testid="totp-secret">([A-Z2-7]+)<', started.text)
    assert secret

    without = http.post(
        "/account/2fa/confirm",
        data={"csrf_token": csrf_token(started.text), "code": pyotp.TOTP(secret[1]).now()},
    )
    assert without.status_code == 422
    assert "confirm it is you" in without.text
    secret = re.search(r'data-testid="totp-secret">([A-Z2-7]+)<', without.text)
    assert secret, "a new key to try again"
    done = http.post(
        "/account/2fa/confirm",
        data={
            "csrf_token": csrf_token(without.text),
            "code": pyotp.TOTP(secret[1]).now(),
            "password": PASSWORD,
        },
    )
    assert done.status_code == 200, done.text
    assert 'data-testid="recovery-codes"' in done.text


def _token_form(page: str) -> str:
    form = re.search(r'<form method="post" action="/account/tokens".*?</form>', page, re.DOTALL)
    assert form, "the account page has the new token form"
    return form[0]


def _new_token(http: httpx2.Client, name: str, **extra: str) -> httpx2.Response:
    account = http.get("/account")
    data = {"csrf_token": csrf_token(account.text), "name": name, "expires_in_days": "7", **extra}
    return http.post("/account/tokens", data=data)


def test_a_new_api_token_long_after_signing_in_asks_for_the_password(
    console_server: RunningServer, admin_api: ApiClient
) -> None:
    admin_api.call("POST", "/api/v1/users", json={"username": "late-minter", "password": PASSWORD + "-0"})
    first = ApiClient(console_server, "late-minter", PASSWORD + "-0")
    first.call(
        "POST", "/api/v1/me/password", json={"current_password": PASSWORD + "-0", "new_password": PASSWORD}
    )
    http = _signed_in(console_server, "late-minter", PASSWORD)
    assert 'name="password"' not in _token_form(http.get("/account").text), "not right after signing in"
    fresh = _new_token(http, "fresh")
    assert fresh.status_code == 200, fresh.text
    assert 'data-testid="token-secret"' in fresh.text

    _age_sessions(console_server, "late-minter")
    assert 'name="password"' in _token_form(http.get("/account").text), "the form asks for the password"
    without = _new_token(http, "late")
    assert without.status_code == 403
    assert "confirm it is you" in without.text
    assert 'data-testid="token-secret"' not in without.text
    wrong = _new_token(http, "late", password="not-the-password")
    assert wrong.status_code == 403
    assert "the current password is wrong" in wrong.text
    assert "not-the-password" not in wrong.text
    done = _new_token(http, "late", password=PASSWORD)
    assert done.status_code == 200, done.text
    assert 'data-testid="token-secret"' in done.text
    assert PASSWORD not in done.text
    listed = admin_api.call("GET", "/api/v1/audit/records", params={"action": "api_token.created"})
    assert isinstance(listed, dict)
    assert PASSWORD not in str(listed)

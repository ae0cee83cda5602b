"""Signing in to the console: first-login password change, two-factor sign-in, sign-out."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx2
import pyotp
from playwright.sync_api import expect

from tests.conftest import RunningServer
from tests.console.conftest import ADMIN_PASSWORD, ApiClient, Console, finish_admin_setup


def test_first_sign_in_then_two_factor(console: Console, console_server: RunningServer) -> None:
    assert console_server.admin_password
    page = console.go("/account/setup")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/account/setup"))
    console.shot("sign-in")

    page = console.sign_in("admin", "not-the-password")
    expect(page.get_by_role("alert")).to_contain_text("username or password is wrong")

    finish_admin_setup(console, console_server.admin_password)
    console.shot("dashboard")

    # The admin role now requires two-factor sign-in: the next sign-in must enrol.
    api = ApiClient(console_server, "admin", ADMIN_PASSWORD)
    api.call("PUT", "/api/v1/access/policy", json={"require_2fa_roles": ["admin"]})
    console.sign_out()
    page = console.sign_in("admin", ADMIN_PASSWORD)
    expect(page).to_have_url(re.compile(r"/account/setup"))
    secret = page.get_by_test_id("totp-secret").inner_text().strip()
    console.shot("enrol-2fa")
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on two-factor sign-in").click()
    expect(page.get_by_test_id("recovery-codes").locator("li")).to_have_count(10)
    console.shot("recovery-codes")
    page.get_by_role("link", name="Go on").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    console.sign_out()
    page = console.sign_in("admin", ADMIN_PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text("two-factor")
    # The code of the enrolment step was used and is not taken twice: the next step's code is, at
    # once (the server accepts a code one step early or late, for clocks that drift).
    next_code = pyotp.TOTP(secret).at(datetime.now(UTC), counter_offset=1)
    page = console.sign_in("admin", ADMIN_PASSWORD, next_code)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    assert not console.console_errors, console.console_errors


def test_sign_in_form_refuses_a_post_without_its_token(console_server: RunningServer) -> None:
    answer = httpx2.post(
        console_server.management_url + "/sign-in",
        data={"username": "admin", "password": "whatever-it-is"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "security token" in answer.text


def test_security_headers_and_cookie_flags(console: Console) -> None:
    answer = httpx2.get(console.url + "/sign-in")
    policy = answer.headers["content-security-policy"]
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "script-src 'self'" in policy
    assert answer.headers["x-frame-options"] == "DENY"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie


def test_api_paths_keep_their_json_problems(console_server: RunningServer) -> None:
    answer = httpx2.get(console_server.management_url + "/api/v1/no-such-thing")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
    page = httpx2.get(console_server.management_url + "/no-such-page", follow_redirects=False)
    assert page.status_code in (303, 404)

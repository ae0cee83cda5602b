"""Console pages for administrators and every user: the audit log (filters, export, verification),
users and roles (the RBAC editor seen from the other side), My account, and sign-in through SSO."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pyotp
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.access.oidc import OidcProvider
from tests.conftest import RunningServer, start_server
from tests.console.conftest import Admin, ApiClient, Console, new_console

NEW_PASSWORD = "copper-meadow-violet-27"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"


def first_sign_in(console: Console, username: str, one_time_password: str) -> Page:
    """A new user's first sign-in: they must choose their own password before anything else."""
    page = console.sign_in(username, one_time_password)
    expect(page).to_have_url(re.compile(r"/account/setup"))
    page.get_by_label("Current password").fill(one_time_password)
    page.locator("input[name=new_password]").fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    return page


def nav(page: Page, label: str) -> Locator:
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True)


def test_audit_log_filters_exports_and_verifies(
    signed_in: Console, admin_api: ApiClient, tmp_path: Path
) -> None:
    for name in ("audit-ann", "audit-ben"):
        admin_api.call("POST", "/api/v1/users", json={"username": name})
    # A record whose details carry markup: the page must show it as text.
    admin_api.call("POST", "/api/v1/me/tokens", json={"name": HOSTILE_NAME, "expires_in_days": 1})
    expected = admin_api.call("GET", "/api/v1/audit/records", params={"action": "user.created"})
    assert isinstance(expected, dict)
    expected_ids = {item["id"] for item in expected["items"]}

    page = signed_in.go("/audit")
    page.get_by_label("Action").fill("user.created")
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"action=user.created"))
    rows = page.get_by_test_id("audit-records").locator("tbody tr")
    expect(rows).to_have_count(len(expected_ids))
    for index in range(rows.count()):
        expect(rows.nth(index)).to_contain_text("user.created")
    signed_in.shot("audit-log")

    with page.expect_download() as csv_download:
        page.get_by_role("link", name="CSV").click()
    exported = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text())))
    assert {row["id"] for row in exported} == expected_ids
    assert {row["action"] for row in exported} == {"user.created"}

    with page.expect_download() as jsonl_download:
        page.get_by_role("link", name="JSON lines").click()
    lines = Path(jsonl_download.value.path()).read_text().splitlines()
    assert {json.loads(line)["id"] for line in lines} == expected_ids

    page.get_by_label("Action").fill("api_token.created")
    page.get_by_role("button", name="Apply filters").click()
    page.get_by_role("link", name=re.compile(r"^Details")).first.click()
    details = page.get_by_test_id("audit-details")
    expect(details).to_contain_text(HOSTILE_NAME)
    expect(details.locator("img")).to_have_count(0)
    signed_in.shot("audit-record")

    page = signed_in.go("/audit")
    page.get_by_role("button", name="Verify the chain now").click()
    expect(page.get_by_test_id("verification-result")).to_contain_text("Intact")
    page.reload()
    expect(page.get_by_test_id("verification-last")).to_contain_text("intact")

    # Someone edits a record behind the server's back: the page names it; put back, intact again.
    with sqlite3.connect(signed_in.server.data_dir / "fleetkeeper.db") as database:
        (original,) = database.execute("SELECT actor_name FROM audit_records WHERE seq = 2").fetchone()
        database.execute("UPDATE audit_records SET actor_name = 'mallory' WHERE seq = 2")
    page.get_by_role("button", name="Verify the chain now").click()
    expect(page.get_by_test_id("verification-result")).to_contain_text("Broken at record #2")
    expect(page.get_by_test_id("verification-result")).to_contain_text("altered")
    with sqlite3.connect(signed_in.server.data_dir / "fleetkeeper.db") as database:
        database.execute("UPDATE audit_records SET actor_name = ? WHERE seq = 2", (original,))
    page.get_by_role("button", name="Verify the chain now").click()
    expect(page.get_by_test_id("verification-result")).to_contain_text("Intact")

    page.set_viewport_size({"width": 768, "height": 1024})
    signed_in.shot("audit-log-tablet")
    assert not signed_in.console_errors, signed_in.console_errors


def test_give_a_user_a_role_and_see_their_console_change(
    signed_in: Console, browser: Browser, console_server: RunningServer, request: pytest.FixtureRequest
) -> None:
    admin_page = signed_in.go("/users")
    admin_page.get_by_label("Username").fill("dana")
    admin_page.get_by_role("button", name="Create user").click()
    one_time_password = admin_page.get_by_test_id("one-time-password").inner_text().strip()

    dana, context = new_console(browser, console_server, request.node.name + "-dana")
    try:
        page = first_sign_in(dana, "dana", one_time_password)
        expect(nav(page, "Devices")).to_have_count(0)
        expect(nav(page, "Audit log")).to_have_count(0)

        # A custom role: reading the audit log only.
        admin_page = signed_in.go("/roles")
        admin_page.get_by_role("textbox", name=re.compile(r"^Name")).fill("auditor")
        admin_page.get_by_label("Description").fill("Reads the audit log.")
        admin_page.locator("input[name=grant][value='audit:read']").check()
        admin_page.get_by_role("button", name="Create role").click()
        expect(admin_page).to_have_url(re.compile(r"/roles/auditor$"))
        expect(admin_page.locator("input[name=grant][value='audit:read']")).to_be_checked()
        signed_in.go("/roles")
        signed_in.shot("roles")

        # A scoped grant is kept as typed; an unused custom role can be deleted.
        admin_page.get_by_role("textbox", name=re.compile(r"^Name")).fill("lab-reader")
        admin_page.locator("input[name=grant][value='devices:read']").check()
        admin_page.get_by_label("Device groups for devices:read").fill("lab")
        admin_page.get_by_role("button", name="Create role").click()
        expect(admin_page.get_by_label("Device groups for devices:read")).to_have_value("lab")
        admin_page.once("dialog", lambda dialog: dialog.accept())
        admin_page.get_by_role("button", name="Delete role").click()
        expect(admin_page).to_have_url(re.compile(r"/roles$"))
        expect(admin_page.get_by_role("link", name="lab-reader")).to_have_count(0)

        admin_page = signed_in.go("/users")
        signed_in.shot("users")
        admin_page.get_by_role("link", name="dana").click()
        admin_page.locator("input[name=role][value='read-only']").check()
        admin_page.get_by_label("Device groups for read-only").fill("plant-3, plant-4")
        admin_page.locator("input[name=role][value='auditor']").check()
        admin_page.get_by_role("button", name="Save roles").click()
        expect(admin_page.get_by_label("Device groups for read-only")).to_have_value("plant-3, plant-4")
        signed_in.shot("user-roles")

        page.reload()
        expect(nav(page, "Devices")).to_be_visible()
        expect(nav(page, "Audit log")).to_be_visible()
        expect(nav(page, "Users and roles")).to_have_count(0)
        nav(page, "Audit log").click()
        expect(page.get_by_role("button", name="Verify the chain now")).to_be_visible()
        assert httpx2.get(console_server.management_url + "/users").status_code != 200
        page = dana.go("/users")
        expect(page.get_by_test_id("problem")).to_contain_text("users:manage")

        # Disabling the account ends dana's session at once.
        admin_page.once("dialog", lambda dialog: dialog.accept())
        admin_page.get_by_role("button", name="Disable").click()
        expect(admin_page.get_by_role("button", name="Enable")).to_be_visible()
        page = dana.go("/")
        expect(page).to_have_url(re.compile(r"/sign-in"))
        assert not dana.console_errors, dana.console_errors
    finally:
        context.close()
    assert not signed_in.console_errors, signed_in.console_errors


def test_my_account_password_two_factor_and_api_tokens(
    console: Console, admin_api: ApiClient, console_server: RunningServer
) -> None:
    created = admin_api.call(
        "POST", "/api/v1/users", json={"username": "erin", "roles": [{"role": "read-only"}]}
    )
    assert isinstance(created, dict)
    first_sign_in(console, "erin", created["one_time_password"])

    page = console.go("/account")
    expect(page.get_by_test_id("my-roles")).to_have_text("read-only")
    page.get_by_label("Current password").fill(NEW_PASSWORD)
    page.locator("input[name=new_password]").fill("amber-harvest-pylon-64")
    page.get_by_label("New password again").fill("amber-harvest-pylon-64")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("password is changed")

    page.get_by_text("New API token").click()
    page.get_by_label("Token name").fill("ci")
    page.get_by_label("Expires in (days)").fill("7")
    page.get_by_label("Only the permissions ticked below").check()
    page.locator("input[name=grant][value='releases:read']").uncheck()
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_test_id("token-secret").inner_text().strip()
    api = httpx2.Client(base_url=console_server.management_url, headers={"Authorization": f"Bearer {secret}"})
    me = api.get("/api/v1/me")
    assert me.status_code == 200, me.text
    assert [grant["permission"] for grant in me.json()["permissions"]] == ["devices:read"]

    page.get_by_role("link", name="Back to my account").click()
    expect(page.get_by_test_id("tokens")).to_contain_text("ci")
    assert secret not in page.content(), "the secret is shown once only"

    page.get_by_role("button", name="Turn on two-factor sign-in").click()
    totp_secret = page.get_by_test_id("totp-secret").inner_text().strip()
    page.get_by_label("Code from the app").fill(pyotp.TOTP(totp_secret).now())
    page.get_by_role("button", name="Turn on two-factor sign-in").click()
    expect(page.get_by_test_id("recovery-codes").locator("li")).to_have_count(10)
    page.get_by_role("link", name="Go on").click()
    expect(page.get_by_role("button", name="New recovery codes")).to_be_visible()
    console.shot("my-account")
    page.set_viewport_size({"width": 768, "height": 1024})
    console.shot("my-account-tablet")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke ci").click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    assert api.get("/api/v1/me").status_code == 401

    expect(page.get_by_test_id("sessions").locator("tbody tr")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="End all sessions").click()
    expect(page).to_have_url(re.compile(r"/sign-in"))
    assert not console.console_errors, console.console_errors


# --- single sign-on ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def sso_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with SSO on, and the test suite's OpenID provider, which must know its callback."""
    port = _free_port()
    callback = f"http://127.0.0.1:{port}/api/v1/auth/oidc/callback"
    with OidcProvider(callback) as provider:
        env = {
            "FLEETKEEPER_OIDC_ISSUER": provider.issuer,
            "FLEETKEEPER_OIDC_CLIENT_ID": provider.client_id,
            "FLEETKEEPER_OIDC_CLIENT_SECRET": provider.client_secret,
            "FLEETKEEPER_OIDC_REDIRECT_URL": callback,
            "FLEETKEEPER_OIDC_ROLE_MAPPING": json.dumps({"fleet-admins": ["admin"]}),
        }
        server = start_server(tmp_path_factory.mktemp("console-sso") / "data", env=env, port=port)
        yield server
        server.stop()


def test_sign_in_with_sso(
    browser: Browser, sso_server: RunningServer, request: pytest.FixtureRequest
) -> None:
    console, context = new_console(browser, sso_server, request.node.name)
    try:
        page = console.go("/audit")
        expect(page).to_have_url(re.compile(r"/sign-in\?next=/audit"))
        page.get_by_role("link", name="Sign in with SSO").click()
        # The provider's own sign-in and consent pages.
        page.locator("input[name=username]").fill("alice")
        page.locator("input[name=password]").fill("alice-password")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Allow").click()
        expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
        expect(page.get_by_role("link", name="alice")).to_be_visible()
        console.shot("sso-signed-in")

        # The API's own SSO flow still answers with tokens.
        started = httpx2.get(sso_server.management_url + "/api/v1/auth/oidc/login", follow_redirects=False)
        assert started.status_code == 302
        assert "code_challenge" in started.headers["location"]
        assert not console.console_errors, console.console_errors
    finally:
        context.close()


def test_pages_need_their_permission(console: Console, admin: Admin) -> None:
    for path in ("/audit", "/users", "/roles", "/account", "/audit/export"):
        answer = httpx2.get(console.url + path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/sign-in")

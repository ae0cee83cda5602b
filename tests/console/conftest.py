"""Browser tests: a real server subprocess and Debian's Chromium driven by Playwright.

Chromium comes from the system (`apt-get install chromium`, done by .ci/run); Playwright's own
browser downloads are never used. Each test's pages are photographed into test-results/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import ADMIN_PASSWORD, RunningServer, start_server

CHROMIUM = os.environ.get("FLEETKEEPER_CHROMIUM", "/usr/bin/chromium")
# A sign-in hashes a password with argon2: on a busy 2-core machine it takes seconds, not the
# 5 s Playwright waits by default.
expect.set_options(timeout=20_000)
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped: Playwright's sync API marks this thread's event loop as running while it is
    open, and the async tests of later modules need it back."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@dataclass
class Console:
    """A browser tab on the console, remembering the problems the page reported."""

    server: RunningServer
    page: Page
    test_name: str
    console_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.management_url

    def go(self, path: str) -> Page:
        self.page.goto(self.url + path)
        return self.page

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.test_name}--{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def sign_in(self, username: str, password: str, code: str | None = None) -> Page:
        page = self.go("/sign-in")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        if code:
            page.get_by_label("Two-factor code").fill(code)
        page.get_by_role("button", name="Sign in").click()
        return page

    def sign_out(self) -> None:
        self.page.get_by_role("button", name="Sign out").click()
        expect(self.page).to_have_url(re.compile(r"/sign-in"))


def new_console(browser: Browser, server: RunningServer, test_name: str) -> tuple[Console, BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    console = Console(server, page, re.sub(r"[^\w-]+", "_", test_name))
    # CSP violations and script errors show up here; the tests require none.
    # (A status of 4xx on purpose, e.g. a refused sign-in, is reported too: those are not counted.)
    page.on(
        "console",
        lambda message: (
            message.type == "error"
            and not message.text.startswith("Failed to load resource")
            and console.console_errors.append(f"{message.text} at {message.location}")
        ),
    )
    page.on("pageerror", lambda error: console.console_errors.append(str(error)))
    return console, context


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # A module signs its users in many times: the per-account sign-in limit (its own tests are in
    # tests/access) would refuse the later ones.
    limits = {
        "FLEETKEEPER_SIGN_IN_LIMIT_PER_ACCOUNT": "300/minute",
        "FLEETKEEPER_SIGN_IN_LIMIT_PER_ADDRESS": "600/minute",
    }
    server = start_server(tmp_path_factory.mktemp("console") / "data", env=limits)
    yield server
    server.stop()


@dataclass
class Admin:
    username: str
    password: str
    totp_secret: str

    def code(self) -> str:
        return pyotp.TOTP(self.totp_secret).now()


def finish_admin_setup(console: Console, one_time_password: str) -> Admin:
    """The first admin's first sign-in: own password, then the 2FA their role requires if set."""
    page = console.sign_in("admin", one_time_password)
    expect(page).to_have_url(re.compile(r"/account/setup"))
    page.get_by_label("Current password").fill(one_time_password)
    page.locator("input[name=new_password]").fill(ADMIN_PASSWORD)
    page.get_by_label("New password again").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    return Admin("admin", ADMIN_PASSWORD, "")


@pytest.fixture
def console(
    browser: Browser, console_server: RunningServer, request: pytest.FixtureRequest
) -> Iterator[Console]:
    opened, context = new_console(browser, console_server, request.node.name)
    yield opened
    try:
        opened.shot("end")
    finally:
        context.close()


class ApiClient:
    """The management API as an admin, for setting up what a browser test starts from."""

    def __init__(self, server: RunningServer, username: str, password: str, code: str | None = None) -> None:
        import httpx2

        self.http = httpx2.Client(base_url=server.management_url, timeout=30)
        body = {"username": username, "password": password}
        if code:
            body["totp_code"] = code
        answer = self.http.post("/api/v1/auth/sign-in", json=body)
        answer.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: object) -> object:
        answer = self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert answer.is_success, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json() if answer.content else None


@pytest.fixture(scope="module")
def admin(console_server: RunningServer) -> Admin:
    """The first admin with their own password (set through the API; the browser path is tested
    in test_sign_in.py)."""
    import httpx2

    assert console_server.admin_password
    http = httpx2.Client(base_url=console_server.management_url, timeout=30)
    tokens = http.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": console_server.admin_password}
    ).json()
    changed = http.post(
        "/api/v1/me/password",
        json={"current_password": console_server.admin_password, "new_password": ADMIN_PASSWORD},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert changed.status_code == 204, changed.text
    return Admin("admin", ADMIN_PASSWORD, "")


@pytest.fixture(scope="module")
def admin_api(console_server: RunningServer, admin: Admin) -> ApiClient:
    return ApiClient(console_server, admin.username, admin.password)


@pytest.fixture
def signed_in(console: Console, admin: Admin) -> Console:
    """A browser tab signed in as the admin, on the dashboard."""
    console.sign_in(admin.username, admin.password)
    expect(console.page.get_by_role("heading", name="Dashboard")).to_be_visible()
    return console

"""The API documentation (`/api/docs`): Swagger UI from the console's own pinned copy, under a
policy that runs no inline script, and nothing fetched from another origin (it works offline)."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

from playwright.sync_api import Request, expect

from tests.conftest import Api
from tests.console.conftest import ApiClient, Console


class _References(HTMLParser):
    """Every URL the page makes the browser load: scripts, styles, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        for name in ("src", "href"):
            if values.get(name) and tag in ("script", "link", "img"):
                self.urls.append(values[name] or "")


def directives(policy: str) -> dict[str, list[str]]:
    parts = (part.split() for part in policy.split(";") if part.strip())
    return {words[0]: words[1:] for words in parts}


async def test_the_docs_page_loads_only_its_own_assets_under_a_strict_policy(api: Api) -> None:
    page = await api.client.get("/api/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = directives(page.headers["content-security-policy"])
    scripts = policy.get("script-src", policy["default-src"])
    assert scripts == ["'self'"], "no inline, eval or other origin's script"
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert page.headers["x-content-type-options"] == "nosniff"

    references = _References()
    references.feed(page.text)
    assert references.inline_scripts == 0
    assert references.urls, "the page loads Swagger UI and its start-up script"
    for url in references.urls:
        if url == "data:,":
            continue  # the empty icon, which spares the browser a request for /favicon.ico
        assert urlsplit(url).scheme == "", f"{url} is not on this origin"
        assert urlsplit(url).netloc == "", f"{url} is not on this origin"
        asset = await api.client.get(url)
        assert asset.status_code == 200, f"{url}: {asset.status_code} {asset.text[:200]}"
    assert any("swagger-ui" in url for url in references.urls)


async def test_redoc_is_not_served(api: Api) -> None:
    assert (await api.client.get("/api/redoc")).status_code == 404


def test_swagger_ui_renders_the_operations_offline(console: Console) -> None:
    elsewhere: list[str] = []
    own = urlsplit(console.url).netloc

    def note(request: Request) -> None:
        if urlsplit(request.url).scheme in ("http", "https") and urlsplit(request.url).netloc != own:
            elsewhere.append(request.url)

    console.page.on("request", note)
    # Every violation of the page's policy, as the page itself sees it (not only those logged).
    console.page.add_init_script(
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (event) => window.violations.push(event.violatedDirective + ' ' + event.blockedURI));"
    )
    page = console.go("/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("fleetkeeper")
    abort_path = page.locator('[data-path="/api/v1/releases/uploads/{upload_id}"]')
    upload_abort = page.locator(".opblock-delete", has=abort_path)
    expect(upload_abort).to_be_visible()
    assert page.locator(".opblock").count() > 50, "every operation is listed"
    health = page.locator(".opblock-get", has=page.locator('[data-path="/healthz"]'))
    health.locator(".opblock-summary").click()
    health.get_by_role("button", name="Try it out").click()
    health.get_by_role("button", name="Execute").click()
    expect(health.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    console.shot("api-docs")
    assert not elsewhere, f"requests to other origins: {elsewhere}"
    assert page.evaluate("window.violations") == []
    assert not console.console_errors, console.console_errors


def test_swagger_ui_authorizes_with_a_bearer_token(console: Console, admin_api: ApiClient) -> None:
    token = str(admin_api.http.headers["Authorization"]).removeprefix("Bearer ")
    page = console.go("/api/docs")
    page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".dialog-ux")
    dialog.locator("input").fill(token)
    dialog.locator("button.modal-btn.authorize").click()
    dialog.locator("button.modal-btn.btn-done").click()
    me = page.locator(".opblock-get", has=page.locator('[data-path="/api/v1/me"]'))
    me.locator(".opblock-summary").click()
    me.get_by_role("button", name="Try it out").click()
    me.get_by_role("button", name="Execute").click()
    expect(me.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    console.shot("api-docs-authorized")

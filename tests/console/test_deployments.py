"""Releases and deployments in the console: a release signed and uploaded as the e2e tests do, four
devices enrolled over real mTLS that report through the device API, a phased deployment created
in the browser and watched as the devices report, paused, resumed; another one aborted; and what a
read-only user may not do."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import ClientCertificate, RunningServer
from tests.console.conftest import Admin, ApiClient, Console, new_console
from tests.e2e.fleet import Fleet
from tests.helpers.device_listener import Fleet as DeviceListener
from tests.helpers.devices import FakeDevice

GROUP = "console-fleet"
LIVE = 10_000  # ms: the detail page refreshes every 2 s; a change shows within a few refreshes
SBOM = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.5",
    "components": [
        {"type": "library", "name": "openssl", "version": "3.0.15", "purl": "pkg:deb/debian/openssl@3.0.15"},
        {"type": "library", "name": "zlib", "version": "1.3", "licenses": [{"license": {"id": "Zlib"}}]},
    ],
}


class _SignedInAdmin:
    """What tests/e2e/fleet.py's Fleet needs of an Api: a client, and the admin's headers."""

    def __init__(self, client: httpx2.AsyncClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers

    async def admin_headers(self) -> dict[str, str]:
        return self.headers


def publish_release(server: RunningServer, workdir: Path, headers: dict[str, str]) -> None:
    """Trust installed and firmware 2.0 signed offline and uploaded, by the e2e harness. It is
    async; Playwright's sync API owns this thread's event loop, so it runs in another thread."""

    async def publish() -> None:
        async with httpx2.AsyncClient(base_url=server.management_url, timeout=30) as client:
            fleet = Fleet(server, workdir, _SignedInAdmin(client, headers))  # type: ignore[arg-type]
            await fleet.setup()
            sbom = workdir / "sbom.json"
            sbom.write_text(json.dumps(SBOM))
            await fleet.release(
                "firmware", "2.0", b"firmware 2.0\n" * 100, counter=2, sbom_path=sbom, provides={"app": "2.0"}
            )

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish()).result()


@dataclass
class Device:
    """An enrolled device speaking the device API over mTLS with its own certificate."""

    listener: DeviceListener
    device_id: str
    files: ClientCertificate
    seq: int = 0

    def http(self) -> httpx2.Client:
        return httpx2.Client(
            base_url=self.listener.server.device_url, verify=self.listener.tls(self.files), timeout=10
        )

    def current(self) -> str | None:
        with self.http() as http:
            answer = http.get("/device/v1/deployments/current")
        return answer.json()["deployment_id"] if answer.status_code == 200 else None

    def report(self, deployment_id: str, status: str) -> None:
        self.seq += 1
        with self.http() as http:
            answer = http.post(
                f"/device/v1/deployments/{deployment_id}/status",
                json={"status": status, "seq": self.seq, "detail": f"{status} from the test"},
            )
        assert answer.status_code == 200, answer.text


@dataclass
class DeployFleet:
    devices: list[Device]
    api: ApiClient


@pytest.fixture(scope="module")
def deploy_fleet(
    console_server: RunningServer, admin_api: ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> DeployFleet:
    workdir = tmp_path_factory.mktemp("deploy")
    headers = {"authorization": admin_api.http.headers["Authorization"]}
    publish_release(console_server, workdir, headers)
    listener = DeviceListener(console_server, headers)
    devices = []
    for _ in range(4):
        fake = FakeDevice()
        files = listener.accepted(fake, workdir)
        devices.append(Device(listener, fake.device_id or "", files))
    admin_api.call("POST", "/api/v1/device-groups", json={"name": GROUP})
    admin_api.call(
        "POST", f"/api/v1/device-groups/{GROUP}/devices", json={"devices": [d.device_id for d in devices]}
    )
    return DeployFleet(sorted(devices, key=lambda d: d.device_id), admin_api)


def live(page: Page, test_id: str) -> Any:
    return expect(page.get_by_test_id(test_id))


def test_releases_list_and_detail(signed_in: Console, deploy_fleet: DeployFleet) -> None:
    page = signed_in.go("/releases")
    row = page.get_by_test_id("releases").get_by_role("row", name=re.compile("firmware"))
    expect(row).to_contain_text("2.0")
    expect(row).to_contain_text("rpi4")
    expect(row).to_contain_text("file")
    signed_in.shot("releases-list")
    row.get_by_role("link", name="firmware").click()
    expect(page.get_by_role("heading", name="firmware 2.0")).to_be_visible()
    expect(page.get_by_test_id("signers")).to_contain_text("1 of 1 targets keys")
    expect(page.get_by_test_id("signers").locator("li")).to_have_count(1)
    expect(page.get_by_test_id("signers").locator("li")).to_contain_text("signed")
    expect(page.get_by_test_id("artifact")).to_contain_text("firmware/2.0/")
    expect(page.get_by_test_id("artifact").locator("code").nth(1)).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    expect(page.get_by_test_id("sbom")).to_contain_text("openssl")
    expect(page.get_by_test_id("sbom")).to_contain_text("Zlib")
    signed_in.shot("release-detail")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the SBOM (JSON)").click()
    assert json.loads(Path(download.value.path()).read_text()) == SBOM
    assert not signed_in.console_errors, signed_in.console_errors


def fill_deployment_form(page: Page, name: str, phase_one: str) -> None:
    page.get_by_role("textbox", name=re.compile("^Name")).fill(name)
    page.get_by_role("combobox", name=re.compile("^Release")).select_option("firmware 2.0")
    page.get_by_role("combobox", name=re.compile("^Group")).select_option(GROUP)
    page.get_by_label("Phase 1 size").fill(phase_one)
    page.get_by_label("Phase 1 unit").select_option("count")
    page.get_by_label("Phase 2 size").fill("100")
    page.get_by_label("In one phase", exact=True).fill("50")
    page.get_by_label("Window 1 cron").fill("* * * * *")
    page.get_by_label("Window 1 minutes").fill("1440")
    page.get_by_label("Download cap").fill("10")


def test_create_a_phased_deployment_and_watch_it_progress(
    signed_in: Console, deploy_fleet: DeployFleet
) -> None:
    page = signed_in.go("/deployments")
    page.get_by_role("link", name="New deployment").click()
    expect(page.get_by_role("heading", name="New deployment")).to_be_visible()

    # A mistake is shown next to the part of the form it is about, with what was typed kept.
    fill_deployment_form(page, "Firmware 2.0 to the console fleet", "one")
    signed_in.shot("create-form")
    page.get_by_role("button", name="Create deployment").click()
    expect(page.get_by_test_id("problem-phases")).to_contain_text("phase 1 size must be a whole number")
    expect(page.get_by_role("textbox", name=re.compile("^Name"))).to_have_value(
        "Firmware 2.0 to the console fleet"
    )
    expect(page.get_by_label("Phase 2 size")).to_have_value("100")
    # The service's own checks (as for the API) come back the same way.
    page.get_by_label("Phase 1 size").fill("0")
    page.get_by_role("button", name="Create deployment").click()
    expect(page.get_by_test_id("problem-phases")).to_contain_text("count at least 1")
    signed_in.shot("create-form-problem")

    page.get_by_label("Phase 1 size").fill("1")
    page.get_by_role("button", name="Create deployment").click()
    expect(page).to_have_url(re.compile(r"/deployments/dep"))
    deployment_id = page.url.rsplit("/", 1)[-1]
    expect(page.get_by_test_id("deployment-status")).to_have_text("active")
    expect(page.get_by_test_id("phase-1-counts")).to_have_text("pending 1")
    expect(page.get_by_test_id("phase-2-counts")).to_have_text("pending 3")
    expect(page.get_by_test_id("deployment-devices").locator("tbody tr")).to_have_count(4)

    devices = deploy_fleet.devices
    first = next(device for device in devices if device.current() == deployment_id)
    rest = [device for device in devices if device is not first]
    assert all(device.current() is None for device in rest), "phase 2 waits for phase 1"

    first.report(deployment_id, "downloading")
    live(page, "in-progress").to_have_text("1", timeout=LIVE)
    live(page, "phase-1-counts").to_have_text("downloading 1", timeout=LIVE)
    first.report(deployment_id, "success")
    live(page, "phase-1-done").to_have_text("100.0% done", timeout=LIVE)
    live(page, "succeeded").to_have_text("1", timeout=LIVE)
    # Phase 1 succeeded: phase 2 opened by itself.
    assert all(device.current() == deployment_id for device in rest)
    rest[0].report(deployment_id, "downloading")
    rest[1].report(deployment_id, "installing")
    live(page, "phase-2-counts").to_contain_text("installing 1", timeout=LIVE)
    expect(page.get_by_test_id("phase-2-counts")).to_contain_text("downloading 1")
    expect(page.get_by_test_id("events")).to_contain_text("installing from the test")
    expect(page.locator("progress[aria-label^='Phase 1']")).to_have_attribute("value", "100.0")
    signed_in.shot("deployment-in-progress")

    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_test_id("deployment-status")).to_have_text("paused")
    expect(page.get_by_test_id("pause-reason")).to_have_text("paused by an operator")
    assert rest[2].current() is None, "a paused deployment assigns nothing"
    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_test_id("deployment-status")).to_have_text("active")
    assert rest[2].current() == deployment_id

    for device in rest:
        device.report(deployment_id, "success")
    live(page, "deployment-status").to_have_text("finished", timeout=LIVE)
    expect(page.get_by_test_id("percent-done")).to_have_text("100.0%")
    expect(page.get_by_role("button", name="Abort")).to_have_count(0)

    page = signed_in.go("/deployments")
    row = page.get_by_test_id("deployments").get_by_role(
        "row", name=re.compile("Firmware 2.0 to the console")
    )
    expect(row).to_contain_text("finished")
    expect(row).to_contain_text("firmware 2.0")
    signed_in.shot("deployments-list")
    assert not signed_in.console_errors, signed_in.console_errors


def test_abort_asks_first(signed_in: Console, deploy_fleet: DeployFleet) -> None:
    created: Any = deploy_fleet.api.call(
        "POST",
        "/api/v1/deployments",
        json={"name": "to abort", "release": "firmware", "version": "2.0", "target": {"group": GROUP}},
    )
    # The devices list comes in pages (of 3 here), and the page shown stays while it refreshes.
    page = signed_in.go(f"/deployments/{created['id']}?per_page=3")
    rows = page.get_by_test_id("deployment-devices").locator("tbody tr")
    expect(rows).to_have_count(3)
    first_page = rows.all_inner_texts()
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(r"cursor="))
    assert rows.inner_text() not in first_page
    page.get_by_role("link", name="First page").click()
    expect(rows).to_have_count(3)
    expect(page.get_by_test_id("deployment-status")).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Abort").click()
    expect(page.get_by_test_id("deployment-status")).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Abort").click()
    expect(page.get_by_test_id("deployment-status")).to_have_text("aborted")
    expect(page.get_by_test_id("status-counts")).to_contain_text("aborted: 4")
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    assert all(device.current() is None for device in deploy_fleet.devices)
    assert not signed_in.console_errors, signed_in.console_errors


@pytest.fixture
def reader(
    browser: Browser, console_server: RunningServer, admin: Admin, request: pytest.FixtureRequest
) -> Iterator[Console]:
    password = "reader-lantern-quartz-77"
    api = ApiClient(console_server, admin.username, admin.password)
    api.call(
        "POST",
        "/api/v1/users",
        json={
            "username": "reader",
            "password": password + "-first",
            "roles": [{"role": "read-only", "release_tags": ["stable"]}],
        },
    )
    with httpx2.Client(base_url=console_server.management_url, timeout=30) as http:
        first = http.post(
            "/api/v1/auth/sign-in", json={"username": "reader", "password": password + "-first"}
        )
        changed = http.post(
            "/api/v1/me/password",
            json={"current_password": password + "-first", "new_password": password},
            headers={"authorization": f"Bearer {first.json()['access_token']}"},
        )
        assert changed.status_code == 204, changed.text
    opened, context = new_console(browser, console_server, request.node.name)
    opened.sign_in("reader", password)
    expect(opened.page.get_by_role("heading", name="Dashboard")).to_be_visible()
    yield opened
    context.close()


def test_a_reader_sees_no_controls_and_is_refused(reader: Console, deploy_fleet: DeployFleet) -> None:
    created: Any = deploy_fleet.api.call(
        "POST",
        "/api/v1/deployments",
        json={
            "name": "watched by a reader",
            "release": "firmware",
            "version": "2.0",
            "target": {"group": GROUP},
        },
    )
    page = reader.go("/deployments")
    expect(page.get_by_test_id("deployments")).to_contain_text("watched by a reader")
    expect(page.get_by_role("link", name="New deployment")).to_have_count(0)
    page = reader.go(f"/deployments/{created['id']}")
    expect(page.get_by_test_id("deployment-status")).to_have_text("active")
    for action in ("Pause", "Resume", "Abort", "Open the next phase"):
        expect(page.get_by_role("button", name=action)).to_have_count(0)
    reader.page.set_viewport_size({"width": 768, "height": 1024})
    reader.shot("deployment-detail-tablet")

    # releases:read is narrowed to the tag "stable", as in the API: firmware 2.0 has no tag yet.
    page = reader.go("/releases")
    expect(page.get_by_text("No releases that you may see.")).to_be_visible()
    assert page.request.get(reader.url + "/releases/firmware/2.0").status == 404
    deploy_fleet.api.call("PUT", "/api/v1/releases/firmware/2.0/tags", json={"tags": ["stable"]})
    page = reader.go("/releases/firmware/2.0")
    expect(page.get_by_role("heading", name="firmware 2.0")).to_be_visible()
    expect(page.get_by_text("stable", exact=True)).to_be_visible()

    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    for path in (f"/deployments/{created['id']}/abort", "/deployments/new"):
        refused = page.request.post(reader.url + path, headers={"X-CSRF-Token": csrf})
        assert refused.status == 403, (path, refused.status)
    assert page.request.get(reader.url + "/deployments/new").status == 403
    shown: Any = deploy_fleet.api.call("GET", f"/api/v1/deployments/{created['id']}")
    assert shown["status"] == "active"
    deploy_fleet.api.call("POST", f"/api/v1/deployments/{created['id']}/abort")
    assert not reader.console_errors, reader.console_errors

"""Console pages of the fleet: the enrollment queue, the device list and search, a device's page,
and the dashboard, with devices enrolled for real over the device listener."""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.conftest import RunningServer
from tests.console.conftest import Admin, ApiClient, Console
from tests.helpers.device_listener import Fleet
from tests.helpers.devices import FakeDevice

XSS = "<script>alert(1)</script>"
VIEWER_PASSWORD = "orchard-pylon-vesper-27"


@pytest.fixture(scope="module")
def fleet(console_server: RunningServer, admin_api: ApiClient) -> Fleet:
    return Fleet(console_server, {"authorization": admin_api.http.headers["Authorization"]})


def pending_device(fleet: Fleet, **fields: str) -> FakeDevice:
    device = FakeDevice(**fields)  # type: ignore[arg-type]
    assert fleet.enroll(device).status_code == 202
    assert device.device_id
    return device


def csrf_of(page: Page) -> str:
    return page.locator('meta[name="csrf-token"]').get_attribute("content") or ""


def test_a_pending_device_is_accepted_from_the_queue(signed_in: Console, fleet: Fleet) -> None:
    device = pending_device(fleet, device_type="queue-test")
    page = signed_in.go("/enrollment")
    row = page.locator(f'tr[data-device="{device.device_id}"]')
    expect(row).to_contain_text("queue-test")
    expect(row).to_contain_text(device.serial)
    signed_in.shot("enrollment-queue")

    row.get_by_role("button", name=f"Accept {device.device_id}").click()
    expect(page.get_by_role("status")).to_contain_text(f"Accepted device {device.device_id}")
    expect(page.locator(f'tr[data-device="{device.device_id}"]')).to_have_count(0)

    page = signed_in.go("/devices")
    row = page.get_by_test_id("devices").locator("tr", has=page.get_by_role("link", name=device.device_id))
    expect(row).to_contain_text("accepted")
    assert fleet.enroll(device).status_code == 200  # the device gets its certificate now
    assert not signed_in.console_errors, signed_in.console_errors


def test_filter_search_narrows_the_list_and_explains_a_bad_filter(signed_in: Console, fleet: Fleet) -> None:
    wanted = pending_device(fleet, device_type="filter-kiosk")
    other = pending_device(fleet, device_type="filter-gateway")
    page = signed_in.go("/devices")
    expect(page.get_by_role("link", name=other.device_id)).to_be_visible()

    page.get_by_label("Filter").fill('device_type == "filter-kiosk"')
    page.get_by_role("button", name="Search").click()
    table = page.get_by_test_id("devices")
    expect(table.get_by_role("link", name=wanted.device_id)).to_be_visible()
    expect(table.get_by_role("link", name=other.device_id)).to_have_count(0)
    signed_in.shot("devices-list")

    page.get_by_label("Filter").fill("device_type == ")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_test_id("filter-error")).to_contain_text("end of the filter at column 15")
    expect(page.get_by_test_id("devices")).to_contain_text("No device matches")
    answer = httpx2.get(
        signed_in.url + "/devices", params={"filter": "device_type =="}, follow_redirects=False
    )
    assert answer.status_code == 303  # not signed in: to the sign-in page, never a 500
    assert not signed_in.console_errors, signed_in.console_errors


def test_keyset_pages_go_forward_and_back(signed_in: Console, fleet: Fleet) -> None:
    ids = sorted(str(pending_device(fleet, device_type="pager-test").device_id) for _ in range(3))
    page = signed_in.go('/devices?filter=device_type+%3D%3D+"pager-test"&sort=id&order=asc&limit=2')
    first_column = page.get_by_test_id("devices").locator("tbody tr td:first-child")
    expect(first_column).to_have_text(ids[:2])
    expect(page.get_by_role("link", name="Previous")).to_have_count(0)
    page.get_by_role("link", name="Next").click()
    expect(first_column).to_have_text(ids[2:])
    expect(page.get_by_role("link", name="Next")).to_have_count(0)
    page.get_by_role("link", name="Previous").click()
    expect(first_column).to_have_text(ids[:2])
    page.get_by_role("link", name="Type").click()  # sorting keeps the filter
    expect(first_column).to_have_count(2)
    assert "pager-test" in page.get_by_label("Filter").input_value()


def _accepted_with_xss_inventory(fleet: Fleet, tmp_path: Path) -> tuple[FakeDevice, object]:
    device = FakeDevice(device_type="xss-test")
    files = fleet.accepted(device, tmp_path)
    with httpx2.Client(verify=fleet.tls(files), timeout=10) as http:
        answer = http.put(
            f"{fleet.server.device_url}/device/v1/inventory",
            json={"note": XSS, "os": {"name": "Debian", "version": "12"}, "disks": ["sda", XSS]},
        )
        assert answer.status_code == 204, answer.text
        event = http.post(
            f"{fleet.server.device_url}/device/v1/events",
            json={"type": "security", "code": "metadata_expired", "detail": "director timestamp expired"},
        )
        assert event.status_code == 204, event.text
    return device, files


def test_device_page_shows_what_it_reported_as_text(signed_in: Console, fleet: Fleet, tmp_path: Path) -> None:
    device, _ = _accepted_with_xss_inventory(fleet, tmp_path)
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept()

    signed_in.page.on("dialog", on_dialog)
    page = signed_in.go(f"/devices/{device.device_id}")
    inventory = page.get_by_test_id("inventory")
    expect(inventory.locator("td", has_text="alert").first).to_have_text(XSS)
    expect(inventory).to_contain_text("os.version")
    expect(page.get_by_test_id("certificates")).not_to_contain_text("revoked")
    expect(page.get_by_test_id("audit-trail")).to_contain_text("device.accepted")
    expect(page.get_by_role("link", name="Open terminal")).to_have_attribute(
        "href", f"/devices/{device.device_id}/terminal"
    )
    signed_in.shot("device-detail")
    page.set_viewport_size({"width": 768, "height": 1024})
    signed_in.shot("device-detail-tablet")
    page.set_viewport_size({"width": 1280, "height": 860})
    assert dialogs == []

    page.get_by_role("textbox", name=re.compile("^Tags")).fill("site=plant-3\nrole=kiosk")
    page.get_by_role("button", name="Save tags").click()
    expect(page.get_by_role("region", name="Groups and tags")).to_contain_text("site=plant-3")

    page.get_by_role("button", name="Decommission").click()  # the confirm dialog is accepted
    expect(page.get_by_test_id("device-status")).to_have_text("decommissioned")
    expect(page.get_by_test_id("certificates")).to_contain_text("revoked")
    assert [entry.split(":")[0] for entry in dialogs] == ["confirm"]
    assert not signed_in.console_errors, signed_in.console_errors


def test_dashboard_counts_deployments_and_security_events(
    signed_in: Console, fleet: Fleet, tmp_path: Path
) -> None:
    _accepted_with_xss_inventory(fleet, tmp_path)
    page = signed_in.go("/")
    counts = page.get_by_test_id("device-counts")
    expect(counts).to_contain_text("online")
    expect(counts).to_contain_text("pending enrollment")
    events = page.get_by_test_id("security-events")
    expect(events).to_contain_text("device.security_event")
    expect(events).to_contain_text("metadata_expired")
    expect(page.locator("#dashboard-live")).to_have_attribute("hx-get", "/dashboard/live")
    signed_in.shot("dashboard")
    live = page.request.get(signed_in.url + "/dashboard/live", headers={"HX-Request": "true"})
    assert live.status == 200
    assert "device.security_event" in live.text()
    assert "<html" not in live.text()  # the sections alone
    assert not signed_in.console_errors, signed_in.console_errors


def test_a_change_without_the_csrf_token_is_refused(signed_in: Console, fleet: Fleet) -> None:
    device = pending_device(fleet)
    page = signed_in.go("/enrollment")
    answer = page.request.post(signed_in.url + f"/enrollment/{device.device_id}/accept", form={"group": ""})
    assert answer.status == 403
    assert "security token" in answer.text()
    page = signed_in.go(f"/devices/{device.device_id}")
    expect(page.get_by_test_id("device-status")).to_have_text("pending")


def test_a_read_only_user_sees_no_actions_and_is_refused(
    console: Console, fleet: Fleet, admin_api: ApiClient, admin: Admin
) -> None:
    created = admin_api.call(
        "POST",
        "/api/v1/users",
        json={"username": "viewer", "password": "one-time-Passw0rd-x", "roles": [{"role": "read-only"}]},
    )
    assert isinstance(created, dict)
    viewer = ApiClient(console.server, "viewer", "one-time-Passw0rd-x")
    viewer.call(
        "POST",
        "/api/v1/me/password",
        json={"current_password": "one-time-Passw0rd-x", "new_password": VIEWER_PASSWORD},
    )
    device = pending_device(fleet)
    page = console.sign_in("viewer", VIEWER_PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("link", name="Enrollment", exact=True)).to_have_count(0)
    expect(page.get_by_test_id("security-events")).to_have_count(0)

    page = console.go(f"/devices/{device.device_id}")
    expect(page.get_by_test_id("device-status")).to_have_text("pending")
    expect(page.get_by_role("button")).to_have_text(["Sign out"])  # no accept, reject, decommission, tags
    expect(page.get_by_role("link", name="Open terminal")).to_have_count(0)

    page = console.go("/enrollment")
    expect(page.get_by_test_id("problem")).to_contain_text("devices:manage")

    page = console.go("/devices")
    expect(page.get_by_role("button", name=re.compile("Accept|Reject|Decommission"))).to_have_count(0)
    token = csrf_of(page)
    assert token
    answer = page.request.post(
        console.url + f"/enrollment/{device.device_id}/accept", form={"csrf_token": token}
    )
    assert answer.status == 403
    assert "devices:manage" in answer.text()  # refused for the permission, not for CSRF
    assert "security token" not in answer.text()
    assert not console.console_errors, console.console_errors

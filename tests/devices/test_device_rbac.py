"""Device routes × built-in roles × a device inside and outside the role's group scope."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api
from tests.helpers.devices import FakeDevice, enroll
from tests.helpers.roles import EXPECTED

# (method, path template, permission, body); {device} is replaced by the target device's id.
DEVICE_ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/devices/{device}", "devices:read", None),
    ("PUT", "/api/v1/devices/{device}/tags", "devices:manage", {"tags": {"k": "v"}}),
    ("POST", "/api/v1/devices/{device}/key-rotation/approve", "devices:manage", None),
    ("POST", "/api/v1/devices/{device}/reject", "devices:manage", None),
    ("POST", "/api/v1/devices/{device}/accept", "devices:manage", None),
    ("POST", "/api/v1/devices/{device}/decommission", "devices:manage", None),
]


def denied(status: int, body: dict[str, Any]) -> bool:
    return status == 403 or (status == 404 and body.get("code") == "device_not_found")


@pytest.mark.parametrize("role", sorted(EXPECTED))
@pytest.mark.parametrize("scoped", [False, True], ids=["unscoped", "scoped-to-plant-3"])
async def test_device_routes_inside_and_outside_the_scope(api: Api, role: str, scoped: bool) -> None:
    admin = await api.admin_headers()
    for name in ("plant-3", "plant-4"):
        await api.client.post("/api/v1/device-groups", json={"name": name}, headers=admin)
    caller = await api.create_user(
        "caller",
        "tulip-orbit-canyon-7",
        roles=[{"role": role, "device_groups": ["plant-3"] if scoped else None}],
    )
    held = EXPECTED[role]
    mismatches = []
    for method, template, permission, body in DEVICE_ROUTES:
        for target in ("plant-3", "plant-4"):
            device = FakeDevice()
            await enroll(api.runtime, device)
            added = await api.client.post(
                f"/api/v1/device-groups/{target}/devices", json={"devices": [device.device_id]}, headers=admin
            )
            assert added.status_code == 204
            response = await api.client.request(
                method, template.format(device=device.device_id), json=body, headers=caller
            )
            expect_allowed = permission in held and (not scoped or target == "plant-3")
            payload = response.json() if response.content else {}
            if expect_allowed == denied(response.status_code, payload) or response.status_code >= 500:
                mismatches.append(
                    f"{method} {template} on {target}: {response.status_code} {response.text[:100]}"
                )
    assert not mismatches, "\n".join(mismatches)


async def test_listing_shows_only_devices_in_scope(api: Api) -> None:
    admin = await api.admin_headers()
    await api.client.post("/api/v1/device-groups", json={"name": "plant-3"}, headers=admin)
    inside, outside = FakeDevice(), FakeDevice()
    for device in (inside, outside):
        await enroll(api.runtime, device)
    await api.client.post(
        "/api/v1/device-groups/plant-3/devices", json={"devices": [inside.device_id]}, headers=admin
    )
    reader = await api.create_user(
        "r", "tulip-orbit-canyon-7", roles=[{"role": "read-only", "device_groups": ["plant-3"]}]
    )
    listed = (await api.client.get("/api/v1/devices", headers=reader)).json()["items"]
    assert [item["id"] for item in listed] == [inside.device_id]
    everyone = (await api.client.get("/api/v1/devices", headers=admin)).json()["items"]
    assert {item["id"] for item in everyone} == {inside.device_id, outside.device_id}

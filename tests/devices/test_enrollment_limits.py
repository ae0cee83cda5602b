"""Bounds on the enrollment queue against flooding: devices waiting at once, requests per address
and per network, and how long a request waits for an operator."""

from __future__ import annotations

from datetime import timedelta

import httpx2
from sqlalchemy import func, select
from structlog.testing import capture_logs

from fleetkeeper.devices.models import Device
from tests.conftest import Api, RuntimeFactory, api_for
from tests.helpers.devices import FakeDevice, actions_for, device_client, public_pem


async def enroll_from(api: Api, device: FakeDevice, address: str = "198.51.100.20") -> httpx2.Response:
    async with device_client(api.runtime, address=address) as client:
        response = await client.post("/device/v1/enroll", json=device.enroll_body())
    if response.status_code in (200, 202):
        device.device_id = response.json()["device_id"]
    return response


async def pending_count(api: Api) -> int:
    async with api.runtime.database.session() as session:
        query = select(func.count()).select_from(Device).where(Device.status == "pending")
        return int(await session.scalar(query) or 0)


async def test_a_full_queue_refuses_new_devices_only(runtime_factory: RuntimeFactory) -> None:
    runtime = await runtime_factory(enrollment_queue_limit=2)
    async with api_for(runtime) as api:
        admin = await api.admin_headers()
        waiting = [FakeDevice(), FakeDevice()]
        for device in waiting:
            assert (await enroll_from(api, device)).status_code == 202

        with capture_logs() as logged:
            refused = await enroll_from(api, FakeDevice(), address="192.0.2.44")
        assert refused.status_code == 503
        assert refused.json()["code"] == "enrollment_queue_full"
        assert "operator" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0
        assert await pending_count(api) == 2, "nothing stored for the refused device"
        warnings = [line for line in logged if line["log_level"] == "warning"]
        assert any(
            line.get("code") == "enrollment_queue_full" and line.get("address") == "192.0.2.44"
            for line in warnings
        ), logged

        polled = await enroll_from(api, waiting[0])
        assert polled.status_code == 202, "a device already waiting keeps polling"
        assert polled.json()["device_id"] == waiting[0].device_id

        token = await api.client.post(
            "/api/v1/enrollment-tokens", json={"name": "line 7", "auto_accept": True}, headers=admin
        )
        assert (await enroll_from(api, FakeDevice(token=token.json()["secret"]))).status_code == 200
        queued_token = await api.client.post("/api/v1/enrollment-tokens", json={"name": "q"}, headers=admin)
        by_token = await enroll_from(api, FakeDevice(token=queued_token.json()["secret"]))
        assert by_token.status_code == 202, "a batch token's device queues up even when the queue is full"
        registered = FakeDevice()
        preauthorized = await api.client.post(
            "/api/v1/devices/preauthorize",
            json={
                "device_type": "rpi4",
                "serial": registered.serial,
                "public_key": public_pem(registered.key),
            },
            headers=admin,
        )
        assert preauthorized.status_code == 201
        assert (await enroll_from(api, registered)).status_code == 200

        await api.client.post(f"/api/v1/devices/{waiting[1].device_id}/reject", headers=admin)
        await api.client.post(f"/api/v1/devices/{by_token.json()['device_id']}/accept", headers=admin)
        assert (await enroll_from(api, FakeDevice())).status_code == 202, "room again after a decision"


async def test_requests_are_limited_per_network_as_well_as_per_address(
    runtime_factory: RuntimeFactory,
) -> None:
    runtime = await runtime_factory(
        enrollment_limit_per_address="100/minute", enrollment_limit_per_network="3/minute"
    )
    async with api_for(runtime) as api:
        for address in ("198.51.100.1", "198.51.100.2", "::ffff:198.51.100.3"):
            assert (await enroll_from(api, FakeDevice(), address)).status_code == 202
        limited = await enroll_from(api, FakeDevice(), "198.51.100.254")
        assert limited.status_code == 429
        assert limited.json()["code"] == "rate_limited"
        assert "network" in limited.json()["detail"]
        assert int(limited.headers["retry-after"]) > 0
        assert (await enroll_from(api, FakeDevice(), "198.51.101.1")).status_code == 202, "another /24"

        for address in ("2001:db8:0:1::1", "2001:db8:0:2::7", "2001:db8:0:ff::1"):
            assert (await enroll_from(api, FakeDevice(), address)).status_code == 202
        assert (await enroll_from(api, FakeDevice(), "2001:db8:0:3::1")).status_code == 429, "same /56"
        assert (await enroll_from(api, FakeDevice(), "2001:db8:0:100::1")).status_code == 202


async def test_the_network_prefix_is_configurable(runtime_factory: RuntimeFactory) -> None:
    runtime = await runtime_factory(
        enrollment_limit_per_network="1/minute",
        enrollment_network_prefix_v4=32,
        enrollment_network_prefix_v6=64,
    )
    async with api_for(runtime) as api:
        assert (await enroll_from(api, FakeDevice(), "203.0.113.1")).status_code == 202
        assert (await enroll_from(api, FakeDevice(), "203.0.113.2")).status_code == 202
        assert (await enroll_from(api, FakeDevice(), "2001:db8:0:1::1")).status_code == 202
        assert (await enroll_from(api, FakeDevice(), "2001:db8:0:2::1")).status_code == 202
        assert (await enroll_from(api, FakeDevice(), "2001:db8:0:2::2")).status_code == 429


async def test_stale_requests_expire_and_are_audited(api: Api) -> None:
    from fleetkeeper.devices.enrollment_limits import expire_stale_requests

    admin = await api.admin_headers()
    stale, fresh, decided = FakeDevice(), FakeDevice(), FakeDevice()
    for device in (stale, decided):
        assert (await enroll_from(api, device)).status_code == 202
    await api.client.post(f"/api/v1/devices/{decided.device_id}/accept", headers=admin)
    async with api.runtime.database.transaction() as session:
        for device in (stale, decided):
            row = await session.get(Device, device.device_id)
            assert row is not None
            row.created_at = row.created_at - timedelta(days=7, minutes=1)
    assert (await enroll_from(api, fresh)).status_code == 202

    result = await expire_stale_requests(api.runtime)

    assert result.expired == 1
    async with api.runtime.database.session() as session:
        assert await session.get(Device, stale.device_id) is None
        assert await session.get(Device, fresh.device_id) is not None, "waited less than 7 days"
        assert await session.get(Device, decided.device_id) is not None, "decided: kept"
    assert await actions_for(api, stale.device_id or "") == [
        "device.enrollment_requested",
        "device.enrollment_expired",
    ]
    assert (await expire_stale_requests(api.runtime)).expired == 0
    expired_id = stale.device_id
    again = await enroll_from(api, stale)
    assert again.status_code == 202, "a device still polling asks again"
    assert again.json()["device_id"] != expired_id

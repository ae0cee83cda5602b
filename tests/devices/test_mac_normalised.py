"""A MAC is stored lower case and colon-separated, however it was given: an operator's
AA-BB-CC-DD-EE-FF and an agent's aa:bb:cc:dd:ee:ff are one device to filters and groups (issue 18,
finding 5). Migration 0016 brings the values stored before to that form, keeping every device."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import insert, select, text

from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.migrations import upgrade_async
from fleetkeeper.devices.models import Device, DeviceAttribute
from tests.conftest import BACKENDS, Api, FreshDatabaseUrl
from tests.devices.test_preauthorized_identity import found_by
from tests.helpers.devices import FakeDevice, enroll, public_pem

MAC = "aa:bb:cc:dd:ee:ff"


async def test_a_mac_given_with_dashes_is_the_one_the_device_claims_with_colons(api: Api) -> None:
    device = FakeDevice(mac=MAC)
    body = {
        "device_type": "rpi4",
        "serial": device.serial,
        "mac": "AA-BB-CC-DD-EE-FF",
        "public_key": public_pem(device.key),
    }
    registered = await api.client.post(
        "/api/v1/devices/preauthorize", json=body, headers=await api.admin_headers()
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["mac"] == MAC
    assert registered.json()["identity"]["mac"] == MAC
    assert (await enroll(api.runtime, device)).status_code == 200
    assert await found_by(api, f'mac == "{MAC}"') == [device.device_id]
    assert await found_by(api, f'identity.mac == "{MAC}"') == [device.device_id]
    written = '"AA-BB-CC-DD-EE-FF", "AA:BB:CC:DD:EE:FF"'
    assert await found_by(api, f"mac in [{written}]") == [device.device_id], "as before 0016"
    assert await found_by(api, 'identity.mac == "aa-bb-cc-dd-ee-ff"') == [device.device_id]
    assert await found_by(api, 'mac != "AA-BB-CC-DD-EE-FF"') == []


async def test_a_mac_with_a_trailing_newline_is_refused(api: Api) -> None:
    body = {"device_type": "rpi4", "mac": "AA-BB-CC-DD-EE-01\n", "public_key": public_pem(FakeDevice().key)}
    refused = await api.client.post(
        "/api/v1/devices/preauthorize", json=body, headers=await api.admin_headers()
    )
    assert refused.status_code == 422, refused.text


def _device(device_id: str, mac: str) -> dict[str, object]:
    return {
        "id": device_id,
        "status": "accepted",
        "device_type": "rpi4",
        "serial": None,
        "mac": mac,
        "identity": {"device_type": "rpi4", "serial": None, "mac": mac, "attributes": {}},
        "public_key_pem": "-",
        "key_fingerprint": device_id,
        "enrolled_via": "request",
        "created_at": utcnow(),
        "inventory": {},
        "tags": {},
    }


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_migration_normalises_stored_macs_and_keeps_devices_that_then_share_one(
    backend: str, fresh_database_url: FreshDatabaseUrl, caplog: pytest.LogCaptureFixture
) -> None:
    url = await fresh_database_url(backend)
    await upgrade_async(url, "0015")
    database = Database(url)
    try:
        async with database.transaction() as session:
            # As 0015's code stored them: lower-cased, separators kept.
            await session.execute(
                insert(Device), [_device("dev_dashes", "aa-bb-cc-dd-ee-ff"), _device("dev_colons", MAC)]
            )
            await session.execute(
                insert(DeviceAttribute),
                [
                    {"device_id": "dev_dashes", "key": "identity.mac", "value_text": "aa-bb-cc-dd-ee-ff"},
                    {"device_id": "dev_colons", "key": "identity.mac", "value_text": MAC},
                ],
            )
        with caplog.at_level(logging.WARNING, logger="fleetkeeper.migrations"):
            await upgrade_async(url)
        async with database.session() as session:
            devices = (await session.execute(select(Device.id, Device.mac, Device.identity))).all()
            attributes = (
                await session.execute(text("SELECT device_id, value_text FROM device_attributes"))
            ).all()
        assert {(d, mac, identity["mac"]) for d, mac, identity in devices} == {
            ("dev_dashes", MAC, MAC),
            ("dev_colons", MAC, MAC),
        }, "both kept, each normalised"
        assert set(attributes) == {("dev_dashes", MAC), ("dev_colons", MAC)}
        assert "devices dev_colons, dev_dashes share the MAC aa:bb:cc:dd:ee:ff" in caplog.text
    finally:
        await database.dispose()

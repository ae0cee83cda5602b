"""A pre-authorization is authoritative over what the device claims at its first contact, so that a
claimed identity does not move the device into a scope group (issue 18, finding 3): a claimed
value other than the registered one is refused, and what the operator did not register is not
stored. On both databases."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.helpers.devices import FakeDevice, actions_for, audit_details, enroll, public_pem, shown
from tests.helpers.groups import group

PLANT_4 = 'identity.site == "plant-4"'
MAC = "dc:a6:32:01:02:03"


async def preauthorize(api: Api, device: FakeDevice, **identity: Any) -> str:
    registered = await api.client.post(
        "/api/v1/devices/preauthorize",
        json={"device_type": device.device_type, "public_key": public_pem(device.key), **identity},
        headers=await api.admin_headers(),
    )
    assert registered.status_code == 201, registered.text
    device_id: str = registered.json()["id"]
    return device_id


async def found_by(api: Api, filter_expression: str) -> list[str]:
    page = await api.client.get(
        "/api/v1/devices", params={"filter": filter_expression}, headers=await api.admin_headers()
    )
    assert page.status_code == 200, page.text
    return [item["id"] for item in page.json()["items"]]


async def test_a_preauthorized_device_claiming_other_values_than_registered_is_refused(api: Api) -> None:
    await group(api, "plant-4", PLANT_4)
    device = FakeDevice(attributes={"site": "plant-3", "line": "7"}, mac=MAC)
    device_id = await preauthorize(
        api, device, serial=device.serial, mac=MAC.upper().replace(":", "-"), attributes=device.attributes
    )

    claims = [
        (
            "identity.site",
            FakeDevice(serial=device.serial, key=device.key, mac=MAC, attributes={"site": "plant-4"}),
        ),
        ("mac", FakeDevice(serial=device.serial, key=device.key, mac="dc:a6:32:0f:0f:0f")),
    ]
    for field, claim in claims:
        refused = await enroll(api.runtime, claim)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "identity_mismatch"
        assert field in refused.json()["detail"], "the device learns which field differs"
        assert "plant-4" not in refused.json()["detail"]
        assert (await shown(api, device_id))["status"] == "preauthorized", "nothing changed"
    assert await found_by(api, PLANT_4) == []

    # The registered MAC in another spelling is the same MAC.
    accepted = await enroll(api.runtime, device)
    assert accepted.status_code == 200, accepted.text
    assert await found_by(api, 'identity.site == "plant-3"') == [device_id]
    assert (await shown(api, device_id))["groups"] == []
    assert await actions_for(api, device_id) == [
        "device.preauthorized",
        "device.enrollment_refused",
        "device.enrollment_refused",
        "device.accepted",
        "device.certificate_issued",
    ]


async def test_identity_the_operator_did_not_register_is_not_stored(api: Api) -> None:
    await group(api, "plant-4", PLANT_4)
    await group(api, "by-mac", f'mac == "{MAC}"')
    device = FakeDevice(attributes={"line": "7", "site": "plant-4"}, mac=MAC)
    device_id = await preauthorize(api, device, serial=device.serial, attributes={"line": "7"})

    accepted = await enroll(api.runtime, device)
    assert accepted.status_code == 200, accepted.text
    detail = await shown(api, device_id)
    assert (detail["status"], detail["mac"], detail["groups"]) == ("accepted", None, [])
    assert detail["identity"]["attributes"] == {"line": "7"}
    assert await found_by(api, PLANT_4) == []
    assert await found_by(api, f'identity.mac == "{MAC}"') == []
    assert await found_by(api, 'identity.line == "7"') == [device_id]
    # The acceptance names the keys it ignored, never the values the device chose.
    [acceptance] = await audit_details(api, device_id, "device.accepted")
    assert acceptance == {"by": "pre-authorization", "ignored_identity": ["identity.site", "mac"]}


async def test_a_registered_attribute_the_device_does_not_claim_is_kept(api: Api) -> None:
    device = FakeDevice()
    device_id = await preauthorize(api, device, serial=device.serial, mac=MAC, attributes={"site": "plant-3"})
    assert (await enroll(api.runtime, device)).status_code == 200
    assert await found_by(api, 'identity.site == "plant-3"') == [device_id]
    assert (await shown(api, device_id))["mac"] == MAC
    [acceptance] = await audit_details(api, device_id, "device.accepted")
    assert acceptance == {"by": "pre-authorization", "ignored_identity": []}

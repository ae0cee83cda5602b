"""Accepting a device needs devices:manage in every group through which a scope reaches it once
accepted — the rule an auto-accepting token applies for its creator (auto_accept.py) — so that an
identity the device claimed, which a dynamic group reads whatever the status, does not hand it to
another's people (issue 18, finding 3). Through the API, the console and pre-authorization, on
both databases. And a refused move says the same whatever number of unseen groups it touches."""

from __future__ import annotations

import re

import httpx2
import pytest

from tests.conftest import Api
from tests.devices.test_auto_accept_scopes import auto_accept_token
from tests.helpers.console import console_as
from tests.helpers.devices import FakeDevice, accepted_device, enroll, public_pem, shown
from tests.helpers.groups import group, member_of, set_tags
from tests.helpers.users import user

PLANT_4 = 'identity.site == "plant-4"'


pytestmark = pytest.mark.usefixtures("admin_signed_in_once")


async def claimant_in_plant_3(api: Api, operator: dict[str, str]) -> FakeDevice:
    """A device that claimed site plant-4 with op3's auto-accepting token into plant-3: left
    pending by the token (its creator does not manage plant-4)."""
    device = FakeDevice(
        token=await auto_accept_token(api, operator, "plant-3"), attributes={"site": "plant-4"}
    )
    held = await enroll(api.runtime, device)
    assert held.status_code == 202, held.text
    return device


def assert_refused_naming_nothing_unseen(refused: httpx2.Response) -> None:
    assert refused.status_code == 403, refused.text
    problem = refused.json()
    assert problem["permission"] == "devices:manage"
    assert problem["groups"] == []
    assert "plant-4" not in problem["detail"]
    assert "groups outside your scope" in problem["detail"]


async def test_an_operator_does_not_accept_a_device_into_anothers_group_by_its_claimed_identity(
    api: Api,
) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4", PLANT_4)
    op3 = await user(api, "op3", {"role": "admin", "device_groups": ["plant-3"]})
    device = await claimant_in_plant_3(api, op3)

    assert_refused_naming_nothing_unseen(
        await api.client.post(f"/api/v1/devices/{device.device_id}/accept", headers=op3)
    )
    assert (await shown(api, device.device_id))["status"] == "pending", "nothing changed"
    assert (await enroll(api.runtime, device)).status_code == 202

    # Rejecting leaves it in no scope: that stays the plant's operators' to do.
    other = await claimant_in_plant_3(api, op3)
    assert (
        await api.client.post(f"/api/v1/devices/{other.device_id}/reject", headers=op3)
    ).status_code == 200

    both = await user(api, "op34", {"role": "admin", "device_groups": ["plant-3", "plant-4"]})
    accepted = await api.client.post(f"/api/v1/devices/{device.device_id}/accept", headers=both)
    assert accepted.status_code == 200, accepted.text
    assert (await enroll(api.runtime, device)).status_code == 200


async def test_a_group_the_operator_sees_is_named(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4", PLANT_4)
    op3 = await user(api, "op3", {"role": "admin", "device_groups": ["plant-3"]})
    device = await claimant_in_plant_3(api, op3)
    reader = await user(
        api,
        "op3r4",
        {"role": "admin", "device_groups": ["plant-3"]},
        {"role": "read-only", "device_groups": ["plant-4"]},
    )
    refused = await api.client.post(f"/api/v1/devices/{device.device_id}/accept", headers=reader)
    assert refused.status_code == 403, refused.text
    assert refused.json()["groups"] == ["plant-4"]
    assert "plant-4" in refused.json()["detail"]


async def test_the_console_refuses_the_same(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4", PLANT_4)
    op3 = await user(api, "op3", {"role": "admin", "device_groups": ["plant-3"]})
    device = await claimant_in_plant_3(api, op3)
    async with console_as(api, "op3") as console:
        queue = await console.get("/enrollment")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', queue.text)
        assert csrf
        for into in ("", "plant-3"):
            refused = await console.post(
                f"/enrollment/{device.device_id}/accept", data={"group": into, "csrf_token": csrf.group(1)}
            )
            assert refused.status_code == 403, refused.text
            assert "plant-4" not in refused.text
    assert (await shown(api, device.device_id))["status"] == "pending"


async def test_a_pre_authorization_does_not_register_an_identity_into_anothers_group(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4", PLANT_4)
    op3 = await user(api, "op3", {"role": "admin", "device_groups": ["plant-3"]})
    device = FakeDevice(attributes={"site": "plant-4"})
    body = {
        "device_type": "rpi4",
        "serial": device.serial,
        "public_key": public_pem(device.key),
        "groups": ["plant-3"],
    }
    refused = await api.client.post(
        "/api/v1/devices/preauthorize", json={**body, "attributes": {"site": "plant-4"}}, headers=op3
    )
    assert_refused_naming_nothing_unseen(refused)
    allowed = await api.client.post(
        "/api/v1/devices/preauthorize", json={**body, "attributes": {"site": "plant-3"}}, headers=op3
    )
    assert allowed.status_code == 201, allowed.text


async def test_a_refused_move_says_the_same_for_any_number_of_unseen_groups(api: Api) -> None:
    """Else an operator could count, by the values they try, which tags hidden groups read."""
    await group(api, "plant-3")
    await group(api, "canary", 'tag.ring == "canary"')
    await group(api, "canary-too", 'tag.ring == "canary" or tag.ring == "early"')
    device = await accepted_device(api)
    await member_of(api, "plant-3", device.device_id)
    op3 = await user(api, "op3", {"role": "admin", "device_groups": ["plant-3"]})

    into_one = await set_tags(api, op3, device.device_id, ring="early")
    into_two = await set_tags(api, op3, device.device_id, ring="canary")
    for refused in (into_one, into_two):
        assert refused.status_code == 403, refused.text
        assert "group(s)" not in refused.json()["detail"]
        assert "canary" not in refused.json()["detail"]
    assert into_one.json()["detail"] == into_two.json()["detail"]

"""A static group's membership moves a device into or out of the dynamic groups that read `group`:
every path that changes one (a group's members, pre-authorization's groups, an enrollment token's
group, the console's accept-into-group) needs devices:manage in each group the device thereby
enters or leaves (scopes.checking_moves). On both databases."""

from __future__ import annotations

import re
from typing import Any

import httpx2
import pytest

from tests.conftest import Api
from tests.helpers.console import console_as
from tests.helpers.devices import (
    FakeDevice,
    accepted_device,
    actions_for,
    audit_details,
    enroll,
    public_pem,
    shown,
)
from tests.helpers.groups import group, member_of
from tests.helpers.users import user

LABDYN = 'group == "lab"'
NOTQ = 'group != "quarantine" and status == "accepted"'
OPERATOR_GROUPS = ["plant-3", "lab", "quarantine"]


pytestmark = pytest.mark.usefixtures("admin_signed_in_once")


async def lab_setup(api: Api) -> tuple[dict[str, str], dict[str, str]]:
    """Groups plant-3, lab, quarantine (static), labdyn and notq (dynamic, fit as scopes); the
    headers of op3 (devices:manage on the static ones) and of tslab (troubleshooter on labdyn)."""
    for name in OPERATOR_GROUPS:
        await group(api, name)
    await group(api, "labdyn", LABDYN)
    await group(api, "notq", NOTQ)
    op3 = await user(api, "op3", {"role": "admin", "device_groups": OPERATOR_GROUPS})
    tslab = await user(api, "tslab", {"role": "troubleshooter", "device_groups": ["labdyn"]})
    return op3, tslab


async def members(
    api: Api, name: str, device_id: str | None, headers: dict[str, str], *, add: bool
) -> httpx2.Response:
    return await api.client.request(
        "POST" if add else "DELETE",
        f"/api/v1/device-groups/{name}/devices",
        json={"devices": [device_id]},
        headers=headers,
    )


def assert_refused_naming_nothing_unseen(refused: httpx2.Response) -> None:
    assert refused.status_code == 403, refused.text
    problem = refused.json()
    assert problem["permission"] == "devices:manage"
    assert problem["groups"] == []
    assert "labdyn" not in problem["detail"]
    assert "notq" not in problem["detail"]
    assert "groups outside your scope" in problem["detail"]


async def test_adding_to_a_static_group_does_not_move_a_device_into_a_dynamic_group_of_anothers(
    api: Api,
) -> None:
    op3, tslab = await lab_setup(api)
    device = await accepted_device(api)
    await member_of(api, "plant-3", device.device_id)
    assert (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=tslab)).status_code == 404

    assert_refused_naming_nothing_unseen(await members(api, "lab", device.device_id, op3, add=True))
    assert (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=tslab)).status_code == 404
    assert (await shown(api, device.device_id))["groups"] == ["notq", "plant-3"], "nothing changed"

    both = await user(api, "op3lab", {"role": "admin", "device_groups": [*OPERATOR_GROUPS, "labdyn"]})
    assert (await members(api, "lab", device.device_id, both, add=True)).status_code == 204
    reached = await api.client.get(f"/api/v1/devices/{device.device_id}", headers=tslab)
    assert reached.status_code == 200, reached.text
    assert reached.json()["groups"] == ["labdyn"]

    # Out again takes it from tslab: the same rule.
    assert_refused_naming_nothing_unseen(await members(api, "lab", device.device_id, op3, add=False))
    assert (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=tslab)).status_code == 200


async def test_adding_to_a_static_group_does_not_take_a_device_out_of_a_dynamic_group_of_anothers(
    api: Api,
) -> None:
    op3, _ = await lab_setup(api)
    device = await accepted_device(api)
    await member_of(api, "plant-3", device.device_id)
    assert_refused_naming_nothing_unseen(await members(api, "quarantine", device.device_id, op3, add=True))
    assert (await shown(api, device.device_id))["groups"] == ["notq", "plant-3"]

    # A member change that moves the device across no group of another's stays the operator's.
    # (Into and out of a second group of theirs: out of plant-3, op3 would no longer reach it.)
    await group(api, "plant-3b")
    op3b = await user(api, "op3b", {"role": "admin", "device_groups": ["plant-3", "plant-3b"]})
    assert (await members(api, "plant-3b", device.device_id, op3b, add=True)).status_code == 204
    assert (await members(api, "plant-3b", device.device_id, op3b, add=False)).status_code == 204


async def test_pre_authorizing_into_a_static_group_does_not_put_a_device_in_a_dynamic_group_of_anothers(
    api: Api,
) -> None:
    op3, _ = await lab_setup(api)
    device = FakeDevice()
    body = {"device_type": "rpi4", "serial": device.serial, "public_key": public_pem(device.key)}
    refused = await api.client.post(
        "/api/v1/devices/preauthorize", json={**body, "groups": ["lab"]}, headers=op3
    )
    assert_refused_naming_nothing_unseen(refused)
    assert (await enroll(api.runtime, device)).status_code == 202, "no pre-authorization was made"

    # Once accepted, a device of plant-3 is in notq too: pre-authorizing it needs notq as well.
    other = FakeDevice()
    body = {"device_type": "rpi4", "serial": other.serial, "public_key": public_pem(other.key)}
    assert_refused_naming_nothing_unseen(
        await api.client.post(
            "/api/v1/devices/preauthorize", json={**body, "groups": ["plant-3"]}, headers=op3
        )
    )
    op3n = await user(api, "op3n", {"role": "admin", "device_groups": [*OPERATOR_GROUPS, "notq"]})
    allowed = await api.client.post(
        "/api/v1/devices/preauthorize", json={**body, "groups": ["plant-3"]}, headers=op3n
    )
    assert allowed.status_code == 201, allowed.text


async def token_into(api: Api, headers: dict[str, str], group_name: str, *, auto_accept: bool) -> str:
    made = await api.client.post(
        "/api/v1/enrollment-tokens",
        json={"name": f"into {group_name}", "group": group_name, "auto_accept": auto_accept},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    secret: str = made.json()["secret"]
    return secret


async def test_an_enrollment_token_does_not_put_a_device_in_a_dynamic_group_its_creator_does_not_manage(
    api: Api,
) -> None:
    op3, tslab = await lab_setup(api)
    for auto_accept in (False, True):
        device = FakeDevice(token=await token_into(api, op3, "lab", auto_accept=auto_accept))
        answer = await enroll(api.runtime, device)
        assert answer.status_code == 202, answer.text
        detail = await shown(api, device.device_id)
        assert detail["status"] == "pending"
        assert detail["groups"] == [], "neither lab nor, through it, labdyn"
        assert (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=tslab)).status_code == 404
        [withheld] = await audit_details(api, device.device_id, "device.token_group_withheld")
        assert withheld["reason"] == "creator_lacks_devices_manage"
        assert withheld["group"] == "lab"
        assert withheld["groups"] == ["labdyn"]
        assert "device.accepted" not in await actions_for(api, device.device_id or "")

    # A token into plant-3 moves its devices across no group of another's; accepted, they are in
    # notq too, which an auto-accepting token's creator must manage as well (auto_accept.py).
    ours = FakeDevice(token=await token_into(api, op3, "plant-3", auto_accept=False))
    assert (await enroll(api.runtime, ours)).status_code == 202
    assert (await shown(api, ours.device_id))["groups"] == ["plant-3"]
    op3n = await user(api, "op3n", {"role": "admin", "device_groups": [*OPERATOR_GROUPS, "notq"]})
    accepted = FakeDevice(token=await token_into(api, op3n, "plant-3", auto_accept=True))
    assert (await enroll(api.runtime, accepted)).status_code == 200
    assert (await shown(api, accepted.device_id))["groups"] == ["notq", "plant-3"]


async def test_the_console_does_not_accept_a_device_into_a_static_group_that_moves_it_into_anothers(
    api: Api,
) -> None:
    _, tslab = await lab_setup(api)
    # Accepting moves the device into notq: this operator manages that too, not labdyn.
    await user(api, "op3n", {"role": "admin", "device_groups": [*OPERATOR_GROUPS, "notq"]})
    device = FakeDevice()
    await enroll(api.runtime, device)
    await member_of(api, "plant-3", device.device_id)
    async with console_as(api, "op3n") as console:
        queue = await console.get("/enrollment")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', queue.text)
        assert csrf
        refused = await console.post(
            f"/enrollment/{device.device_id}/accept", data={"group": "lab", "csrf_token": csrf.group(1)}
        )
        assert refused.status_code == 403, refused.text
        assert "labdyn" not in refused.text
        accepted = await console.post(
            f"/enrollment/{device.device_id}/accept", data={"group": "", "csrf_token": csrf.group(1)}
        )
        assert accepted.status_code == 303, accepted.text
    detail: dict[str, Any] = await shown(api, device.device_id)
    assert (detail["status"], detail["groups"]) == ("accepted", ["notq", "plant-3"]), "not into lab"
    assert (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=tslab)).status_code == 404

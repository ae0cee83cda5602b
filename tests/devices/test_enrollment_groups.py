"""The groups an operator names when enrolling (pre-authorizing a device, an enrollment token's
group): scope is checked before anything else, so that a group the caller does not see answers
exactly as an unknown one, and only a static group takes members. On both databases."""

from __future__ import annotations

from typing import Any

import httpx2

from fleetkeeper.devices.models import GroupMember
from tests.conftest import Api
from tests.helpers.devices import FakeDevice, accepted_device, public_pem
from tests.helpers.groups import group
from tests.helpers.responses import answer
from tests.helpers.users import PASSWORD


async def preauthorize(api: Api, headers: dict[str, str], groups: list[str]) -> httpx2.Response:
    device = FakeDevice()
    body = {
        "device_type": "rpi4",
        "serial": device.serial,
        "public_key": public_pem(device.key),
        "groups": groups,
    }
    return await api.client.post("/api/v1/devices/preauthorize", json=body, headers=headers)


async def new_token(api: Api, headers: dict[str, str], group_name: str) -> httpx2.Response:
    return await api.client.post(
        "/api/v1/enrollment-tokens", json={"name": f"into {group_name}", "group": group_name}, headers=headers
    )


def as_unknown(response: httpx2.Response, name: str) -> tuple[int, dict[str, Any]]:
    status, body = answer(response)
    body["detail"] = body["detail"].replace(name, "nothing-here")
    return status, body


async def test_a_group_the_operator_does_not_see_answers_as_an_unknown_one(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4")
    operator = await api.create_user("m3", PASSWORD, roles=[{"role": "admin", "device_groups": ["plant-3"]}])

    for attempt in (
        lambda name: preauthorize(api, operator, [name]),
        lambda name: preauthorize(api, operator, ["plant-3", name]),
        lambda name: new_token(api, operator, name),
    ):
        hidden, unknown = await attempt("plant-4"), await attempt("nothing-here")
        assert unknown.json()["code"] == "group_not_found"
        assert as_unknown(hidden, "plant-4") == answer(unknown), "the same status, code and detail"

    assert (await preauthorize(api, operator, ["plant-3"])).status_code == 201
    assert (await new_token(api, operator, "plant-3")).status_code == 201


async def test_a_group_the_operator_sees_but_does_not_manage_is_refused_by_name(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4")
    operator = await api.create_user(
        "m3r4",
        PASSWORD,
        roles=[
            {"role": "admin", "device_groups": ["plant-3"]},
            {"role": "read-only", "device_groups": ["plant-4"]},
        ],
    )
    for refused in (
        await preauthorize(api, operator, ["plant-4"]),
        await new_token(api, operator, "plant-4"),
    ):
        assert refused.status_code == 403, refused.text
        assert refused.json()["permission"] == "devices:manage"
        assert "plant-4" in refused.json()["detail"], "they see it: the refusal may name it"


async def test_a_dynamic_group_takes_no_members_at_enrollment(api: Api) -> None:
    """A member row in a dynamic group would put the device in that group whatever its filter says."""
    await group(api, "canary", 'tag.ring == "canary"')
    admin = await api.admin_headers()
    for refused in (await preauthorize(api, admin, ["canary"]), await new_token(api, admin, "canary")):
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "dynamic_group"
    members = (await api.client.get("/api/v1/device-groups/canary/devices", headers=admin)).json()
    assert members["items"] == []


async def test_members_of_a_group_the_operator_does_not_see_answer_as_an_unknown_one(api: Api) -> None:
    """Not enrollment, but the same question: which groups may a device be put in."""
    await group(api, "plant-3")
    await group(api, "plant-4")
    operator = await api.create_user("m3", PASSWORD, roles=[{"role": "admin", "device_groups": ["plant-3"]}])
    for method in ("POST", "DELETE"):
        hidden, unknown = [
            await api.client.request(
                method, f"/api/v1/device-groups/{name}/devices", json={"devices": ["dev_1"]}, headers=operator
            )
            for name in ("plant-4", "nothing-here")
        ]
        assert unknown.json()["code"] == "group_not_found"
        assert as_unknown(hidden, "plant-4") == answer(unknown), method


async def test_a_member_row_left_in_a_dynamic_group_puts_no_device_in_it(api: Api) -> None:
    """Enrollment wrote such rows before it refused dynamic groups: the filter alone decides."""
    canary = await group(api, "canary", 'tag.ring == "canary"')
    device = await accepted_device(api)
    async with api.runtime.database.transaction() as session:
        session.add(GroupMember(group_id=canary["id"], device_id=device.device_id))
    operator = await api.create_user(
        "t", PASSWORD, roles=[{"role": "troubleshooter", "device_groups": ["canary"]}]
    )
    assert (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=operator)).status_code == 404
    shown = await api.client.get(f"/api/v1/devices/{device.device_id}", headers=await api.admin_headers())
    assert shown.json()["groups"] == []


async def test_scoped_operators_see_only_their_groups_enrollment_tokens(api: Api) -> None:
    admin = await api.admin_headers()
    for name in ("g1", "g2"):
        await api.client.post("/api/v1/device-groups", json={"name": name}, headers=admin)
    theirs = (
        await api.client.post("/api/v1/enrollment-tokens", json={"name": "t2", "group": "g2"}, headers=admin)
    ).json()
    await api.client.post(
        "/api/v1/roles", json={"name": "ops", "grants": [{"permission": "devices:manage"}]}, headers=admin
    )
    ops = await api.create_user(
        "ops", "tulip-orbit-canyon-7", roles=[{"role": "ops", "device_groups": ["g1"]}]
    )
    mine = (
        await api.client.post("/api/v1/enrollment-tokens", json={"name": "t1", "group": "g1"}, headers=ops)
    ).json()
    listed = [t["id"] for t in (await api.client.get("/api/v1/enrollment-tokens", headers=ops)).json()]
    assert listed == [mine["token"]["id"]]
    revoke = await api.client.delete(f"/api/v1/enrollment-tokens/{theirs['token']['id']}", headers=ops)
    assert revoke.status_code == 404

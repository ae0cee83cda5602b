"""Groups as permission scopes: a device must not move itself into (or out of) a scope, nor an
operator move it into a group they do not manage; and a scoped reader sees only their groups."""

from __future__ import annotations

from tests.conftest import Api
from tests.helpers.devices import accepted_device, report
from tests.helpers.groups import group, member_of, set_tags
from tests.helpers.responses import answer
from tests.helpers.users import user, user_scoped_to_unfit_groups

CANARY = 'tag.ring == "canary"'


async def test_a_tag_does_not_move_a_device_into_a_group_the_operator_does_not_manage(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "canary", CANARY)
    device = await accepted_device(api)
    await member_of(api, "plant-3", device.device_id)
    manager = await user(api, "m3", {"role": "admin", "device_groups": ["plant-3"]})
    troubleshooter = await user(api, "t", {"role": "troubleshooter", "device_groups": ["canary"]})

    refused = await set_tags(api, manager, device.device_id, ring="canary")
    assert refused.status_code == 403, refused.text
    assert refused.json()["permission"] == "devices:manage"
    shown = (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=manager)).json()
    assert shown["tags"] == {}, "nothing changed"
    assert (
        await api.client.get(f"/api/v1/devices/{device.device_id}", headers=troubleshooter)
    ).status_code == 404
    # Tags that move the device into no group stay the plant's operators' own.
    assert (await set_tags(api, manager, device.device_id, owner="line-7")).status_code == 200

    both = await user(api, "m3c", {"role": "admin", "device_groups": ["plant-3", "canary"]})
    assert (await set_tags(api, both, device.device_id, ring="canary")).status_code == 200
    assert (
        await api.client.get(f"/api/v1/devices/{device.device_id}", headers=troubleshooter)
    ).status_code == 200
    # Out again needs the same: the canary's people would lose the device.
    left = await set_tags(api, manager, device.device_id, owner="line-7")
    assert left.status_code == 403, left.text


async def test_a_group_that_reads_what_devices_report_reaches_no_device_as_a_scope(api: Api) -> None:
    """A device chooses its own inventory: a group that reads it must not decide who reaches the
    device. It still works as a target and a search; as a scope it reaches nothing."""
    reported = await group(api, "reported-canary", 'attributes.ring == "canary"')
    seen = await group(api, "stale", 'last_seen < "2030-01-01T00:00:00Z"')
    device = await accepted_device(api)
    await report(api, device.certificate, {"attributes": {"ring": "canary"}})
    admin = await api.admin_headers()
    members = (await api.client.get("/api/v1/device-groups/reported-canary/devices", headers=admin)).json()
    assert [item["id"] for item in members["items"]] == [device.device_id], "a target and a search still"
    scoped = await user_scoped_to_unfit_groups(api, "t", "troubleshooter", ["reported-canary", "stale"])
    assert (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=scoped)).status_code == 404
    assert (await api.client.get("/api/v1/devices", headers=scoped)).json()["items"] == []

    # The listing says which groups are fit for a scope, and which fields make one unfit.
    assert (reported["usable_as_scope"], reported["device_reported_fields"]) == (False, ["attributes.ring"])
    assert (seen["usable_as_scope"], seen["device_reported_fields"]) == (False, ["last_seen"])
    tagged = await group(api, "tagged-canary", CANARY)
    assert (tagged["usable_as_scope"], tagged["device_reported_fields"]) == (True, [])
    fixed = await group(api, "rpis", 'device_type == "rpi4" and identity.site == "x" and group == "y"')
    assert fixed["usable_as_scope"], "fixed at enrollment or set by operators"


async def test_a_scoped_reader_sees_only_their_groups(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4")
    await group(api, "secret-customers", 'tag.customer in ["acme", "globex"]')
    device = await accepted_device(api)
    for name in ("plant-3", "plant-4"):
        await member_of(api, name, device.device_id)
    reader = await user(api, "r3", {"role": "read-only", "device_groups": ["plant-3"]})

    listed = (await api.client.get("/api/v1/device-groups", headers=reader)).json()
    assert [item["name"] for item in listed] == ["plant-3"]
    everyone = (await api.client.get("/api/v1/device-groups", headers=await api.admin_headers())).json()
    assert [item["name"] for item in everyone] == ["plant-3", "plant-4", "secret-customers"]

    hidden = await api.client.get("/api/v1/device-groups/secret-customers/devices", headers=reader)
    unknown = await api.client.get("/api/v1/device-groups/nothing-here/devices", headers=reader)
    status, body = answer(hidden)
    body["detail"] = body["detail"].replace("secret-customers", "nothing-here")
    assert (status, body) == answer(unknown)
    assert unknown.json()["code"] == "group_not_found"

    shown = (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=reader)).json()
    assert shown["groups"] == ["plant-3"], "the groups the reader sees"

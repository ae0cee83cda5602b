"""Groups and search through the API, with the filter language evaluated in the database."""

from __future__ import annotations

from tests.conftest import Api
from tests.helpers.devices import accepted_device, report
from tests.helpers.users import user_scoped_to_unfit_groups


async def test_dynamic_group_and_search(api: Api) -> None:
    admin = await api.admin_headers()
    old = await accepted_device(api)
    new = await accepted_device(api)
    other = await accepted_device(api, device_type="x86-gateway")
    await report(api, old.certificate, {"os": {"version": "11"}})
    await report(api, new.certificate, {"os": {"version": "12"}})
    await report(api, other.certificate, {"os": {"version": "10"}})
    await api.client.put(
        f"/api/v1/devices/{old.device_id}/tags", json={"tags": {"site": "plant-3"}}, headers=admin
    )

    created = await api.client.post(
        "/api/v1/device-groups",
        json={"name": "old-rpi", "filter": 'device_type == "rpi4" and os.version < "12"'},
        headers=admin,
    )
    assert created.status_code == 201
    assert created.json()["kind"] == "dynamic"
    members = (await api.client.get("/api/v1/device-groups/old-rpi/devices", headers=admin)).json()["items"]
    assert [m["id"] for m in members] == [old.device_id]
    detail = (await api.client.get(f"/api/v1/devices/{old.device_id}", headers=admin)).json()
    assert detail["groups"] == ["old-rpi"]

    found = await api.client.get("/api/v1/devices", params={"filter": 'tag.site == "plant-3"'}, headers=admin)
    assert [d["id"] for d in found.json()["items"]] == [old.device_id]
    everything_but = await api.client.get(
        "/api/v1/devices", params={"filter": 'not (device_type ~ "rpi*")'}, headers=admin
    )
    assert [d["id"] for d in everything_but.json()["items"]] == [other.device_id]

    # A group scopes a role when devices cannot move themselves into it: a reader of "plant-3"
    # (a tag) sees what matches it, now and later; "old-rpi" reads what devices report, and as a
    # scope reaches nothing (tests/devices/test_scope_groups.py).
    await api.client.post(
        "/api/v1/device-groups", json={"name": "plant-3", "filter": 'tag.site == "plant-3"'}, headers=admin
    )
    reader = await user_scoped_to_unfit_groups(api, "r", "read-only", ["plant-3", "old-rpi"])
    assert [d["id"] for d in (await api.client.get("/api/v1/devices", headers=reader)).json()["items"]] == [
        old.device_id
    ]
    await report(api, new.certificate, {"os": {"version": "11.9"}})  # into old-rpi: no matter
    visible = {d["id"] for d in (await api.client.get("/api/v1/devices", headers=reader)).json()["items"]}
    assert visible == {old.device_id}
    await api.client.put(
        f"/api/v1/devices/{new.device_id}/tags", json={"tags": {"site": "plant-3"}}, headers=admin
    )
    visible = {d["id"] for d in (await api.client.get("/api/v1/devices", headers=reader)).json()["items"]}
    assert visible == {old.device_id, new.device_id}


async def test_bad_filters_are_clear_422s(api: Api) -> None:
    admin = await api.admin_headers()
    for expression in ['device_type == "rpi4', "os.version <", "; DROP TABLE devices; --", "a" * 3000]:
        response = await api.client.get("/api/v1/devices", params={"filter": expression}, headers=admin)
        assert response.status_code == 422, expression
        assert response.json()["code"] in ("invalid_filter", "validation_failed")
    group = await api.client.post(
        "/api/v1/device-groups", json={"name": "broken", "filter": "device_type =="}, headers=admin
    )
    assert group.status_code == 422
    assert group.json()["code"] == "invalid_filter"
    assert "position" in group.json()
    assert (await api.client.get("/api/v1/device-groups", headers=admin)).json() == []


async def test_static_group_rules(api: Api) -> None:
    admin = await api.admin_headers()
    device = await accepted_device(api)
    assert (
        await api.client.post("/api/v1/device-groups", json={"name": "bad name!"}, headers=admin)
    ).status_code == 422
    await api.client.post("/api/v1/device-groups", json={"name": "line-7"}, headers=admin)
    assert (await api.client.post("/api/v1/device-groups", json={"name": "line-7"}, headers=admin)).json()[
        "code"
    ] == "group_exists"
    await api.client.post(
        "/api/v1/device-groups", json={"name": "dyn", "filter": 'status == "accepted"'}, headers=admin
    )
    refused = await api.client.post(
        "/api/v1/device-groups/dyn/devices", json={"devices": [device.device_id]}, headers=admin
    )
    assert refused.json()["code"] == "dynamic_group"
    unknown = await api.client.post(
        "/api/v1/device-groups/line-7/devices", json={"devices": ["dev_nope"]}, headers=admin
    )
    assert unknown.status_code == 404
    ok = await api.client.post(
        "/api/v1/device-groups/line-7/devices", json={"devices": [device.device_id]}, headers=admin
    )
    assert ok.status_code == 204
    assert (await api.client.delete("/api/v1/device-groups/line-7", headers=admin)).status_code == 204
    detail = (await api.client.get(f"/api/v1/devices/{device.device_id}", headers=admin)).json()
    assert detail["groups"] == ["dyn"]

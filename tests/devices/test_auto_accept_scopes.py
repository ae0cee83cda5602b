"""An auto-accepting enrollment token acts for its creator: it accepts a device only into groups
where they hold devices:manage now, computed with the identity the device claims, so that a claimed
identity does not move a device into another's scope group (issue 18, finding 3). Otherwise the
device waits for an operator. On both databases."""

from __future__ import annotations

from fleetkeeper.devices.models import EnrollmentToken
from tests.conftest import Api
from tests.helpers.devices import FakeDevice, actions_for, audit_details, enroll, shown
from tests.helpers.groups import group
from tests.helpers.users import user

PLANT_4_LIVE = 'status == "accepted" and identity.site == "plant-4"'


async def auto_accept_token(api: Api, headers: dict[str, str], group_name: str | None = None) -> str:
    made = await api.client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "line 7", "max_uses": 10, "auto_accept": True, "group": group_name},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    secret: str = made.json()["secret"]
    return secret


async def creator_of(api: Api, secret: str) -> str:
    async with api.runtime.database.session() as session:
        token = await session.get(EnrollmentToken, secret.partition(".")[0])
        assert token is not None
        assert token.created_by is not None
        return token.created_by


async def test_an_auto_accept_token_does_not_accept_a_device_into_a_group_its_creator_does_not_manage(
    api: Api,
) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4-live", PLANT_4_LIVE)
    operator = await user(api, "m3", {"role": "admin", "device_groups": ["plant-3"]})
    secret = await auto_accept_token(api, operator, "plant-3")

    ours = FakeDevice(token=secret, attributes={"site": "plant-3"})
    assert (await enroll(api.runtime, ours)).status_code == 200, "a device that stays in the creator's groups"

    claimant = FakeDevice(token=secret, attributes={"site": "plant-4"})
    held = await enroll(api.runtime, claimant)
    assert held.status_code == 202, held.text
    assert held.json()["status"] == "pending"
    detail = await shown(api, claimant.device_id)
    assert detail["status"] == "pending"
    assert detail["groups"] == ["plant-3"], "the token's group as before; not accepted into plant-4-live"
    assert await actions_for(api, claimant.device_id or "") == [
        "device.enrollment_requested",
        "device.auto_accept_withheld",
    ]
    [withheld] = await audit_details(api, claimant.device_id, "device.auto_accept_withheld")
    assert withheld["reason"] == "creator_lacks_devices_manage"
    assert withheld["groups"] == ["plant-4-live"]
    assert withheld["enrolled_with"] == secret.partition(".")[0]
    assert withheld["creator"] == await creator_of(api, secret)
    assert "plant-4-live" in withheld["detail"]
    assert (await enroll(api.runtime, claimant)).status_code == 202, "polling changes nothing"

    # plant-4's people decide.
    both = await user(api, "m34", {"role": "admin", "device_groups": ["plant-3", "plant-4-live"]})
    accepted = await api.client.post(f"/api/v1/devices/{claimant.device_id}/accept", headers=both)
    assert accepted.status_code == 200, accepted.text
    assert (await enroll(api.runtime, claimant)).status_code == 200


async def test_a_group_that_cannot_scope_does_not_hold_a_device_back(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-5-or-new-os", 'identity.site == "plant-5" or os.version == "12"')
    operator = await user(api, "m3", {"role": "admin", "device_groups": ["plant-3"]})
    secret = await auto_accept_token(api, operator, "plant-3")
    device = FakeDevice(token=secret, attributes={"site": "plant-5"})
    assert (await enroll(api.runtime, device)).status_code == 200, "it reaches no device as a scope"


async def test_an_auto_accept_token_of_a_creator_disabled_deleted_or_narrowed_leaves_devices_pending(
    api: Api,
) -> None:
    await group(api, "plant-3")
    admin = await api.admin_headers()
    maker = await user(api, "maker", {"role": "admin"})
    secret = await auto_accept_token(api, maker)
    maker_id = await creator_of(api, secret)
    assert (await enroll(api.runtime, FakeDevice(token=secret))).status_code == 200

    async def held(reason: str) -> None:
        device = FakeDevice(token=secret)
        answer = await enroll(api.runtime, device)
        assert answer.status_code == 202, answer.text
        [withheld] = await audit_details(api, device.device_id, "device.auto_accept_withheld")
        assert withheld["reason"] == reason
        assert "device.accepted" not in await actions_for(api, device.device_id or "")

    # Narrowed to plant-3: a device in no group needs devices:manage everywhere, as at the token's making.
    narrowed = await api.client.put(
        f"/api/v1/users/{maker_id}/roles",
        json=[{"role": "admin", "device_groups": ["plant-3"]}],
        headers=admin,
    )
    assert narrowed.status_code == 200, narrowed.text
    await held("creator_lacks_devices_manage")

    restored = await api.client.put(
        f"/api/v1/users/{maker_id}/roles", json=[{"role": "admin"}], headers=admin
    )
    assert restored.status_code == 200, restored.text
    disabled = await api.client.patch(f"/api/v1/users/{maker_id}", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200, disabled.text
    await held("creator_unavailable")

    assert (await api.client.delete(f"/api/v1/users/{maker_id}", headers=admin)).status_code == 204
    await held("creator_unavailable")

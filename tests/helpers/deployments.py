"""Deployments as the tests set them up: devices written in bulk or enrolled through the device API,
requests and principals for the service, and the device side of a rollout (what it is told, what it
reports)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from tuf.api.metadata import Metadata

from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.service import Principal
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.ids import new_id
from fleetkeeper.deployments.listing import MAX_PAGE, list_devices
from fleetkeeper.deployments.rollout import DeploymentRequest
from fleetkeeper.devices.models import Device, DeviceGroup, GroupMember
from tests.conftest import Api
from tests.helpers.devices import FakeDevice, accepted_device, device_client


async def fleet_of(api: Api, count: int, group: str = "fleet") -> list[FakeDevice]:
    admin = await api.admin_headers()
    await api.client.post("/api/v1/device-groups", json={"name": group}, headers=admin)
    devices = [await accepted_device(api) for _ in range(count)]
    await api.client.post(
        f"/api/v1/device-groups/{group}/devices",
        json={"devices": [d.device_id for d in devices]},
        headers=admin,
    )
    return sorted(devices, key=lambda d: d.device_id or "")


async def deploy(api: Api, **body: Any) -> dict[str, Any]:
    payload = {"name": "fw 2.0", "release": "fw", "version": "2.0", "target": {"group": "fleet"}, **body}
    response = await api.client.post("/api/v1/deployments", json=payload, headers=await api.admin_headers())
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def director_targets(api: Api, device: FakeDevice) -> list[str]:
    async with device_client(api.runtime, device.certificate) as client:
        timestamp = Metadata.from_bytes(
            (await client.get("/device/v1/director/metadata/timestamp.json")).content
        )
        snapshot = Metadata.from_bytes(
            (
                await client.get(
                    f"/device/v1/director/metadata/{timestamp.signed.snapshot_meta.version}.snapshot.json"
                )
            ).content
        )
        version = snapshot.signed.meta["targets.json"].version
        targets = Metadata.from_bytes(
            (await client.get(f"/device/v1/director/metadata/{version}.targets.json")).content
        )
    return list(targets.signed.targets)


async def current(api: Api, device: FakeDevice) -> str | None:
    async with device_client(api.runtime, device.certificate) as client:
        response = await client.get("/device/v1/deployments/current")
    return response.json()["deployment_id"] if response.status_code == 200 else None


async def send(
    api: Api, device: FakeDevice, deployment_id: str, status: str, seq: int, detail: str | None = None
) -> Any:
    async with device_client(api.runtime, device.certificate) as client:
        return await client.post(
            f"/device/v1/deployments/{deployment_id}/status",
            json={"status": status, "seq": seq, "detail": detail},
        )


async def add_devices(
    database: Database, count: int, *, device_type: str = "rpi4", group: str | None = None
) -> list[str]:
    """Accepted devices written in bulk (the fan-out, not enrollment, is under test)."""
    ids = [new_id("dev") for _ in range(count)]
    rows = [
        {
            "id": device_id,
            "status": "accepted",
            "device_type": device_type,
            "serial": None,
            "mac": None,
            "identity": {},
            "public_key_pem": "-",
            "key_fingerprint": device_id,
            "enrolled_via": "request",
            "created_at": utcnow(),
            "inventory": {},
            "tags": {},
        }
        for device_id in ids
    ]
    async with database.transaction() as session:
        if rows:
            await session.execute(insert(Device), rows)
        if group:
            group_id = await session.scalar(select(DeviceGroup.id).where(DeviceGroup.name == group))
            if group_id is None:
                group_id = new_id("grp")
                session.add(
                    DeviceGroup(id=group_id, name=group, description="", kind="static", created_at=utcnow())
                )
                await session.flush()
            if ids:
                await session.execute(
                    insert(GroupMember), [{"group_id": group_id, "device_id": d} for d in ids]
                )
    return ids


def admin(api: Api) -> Principal:
    return Principal(user_id="usr_test", username="tester", grants=GrantSet.everything(), method="password")


def scoped(groups: list[str]) -> Principal:
    """devices:deploy in these groups; the release is read, as every deployment's is."""
    grants = GrantSet.from_json(
        [
            {"permission": "devices:deploy", "scopes": groups},
            {"permission": "devices:read"},
            {"permission": "releases:read"},
        ]
    )
    return Principal(user_id="usr_scoped", username="scoped", grants=grants, method="password")


async def devices_of(api: Api, deployment_id: str, *, limit: int = MAX_PAGE) -> dict[str, tuple[int, str]]:
    """device id -> (phase, status) of every device in the deployment, in the devices list's order
    and through its pages of `limit` (rows and chunks alike)."""
    found: dict[str, tuple[int, str]] = {}
    cursor = None
    while True:
        async with api.runtime.database.session() as session:
            page = await list_devices(session, admin(api), deployment_id, limit=limit, cursor=cursor)
        found |= {entry.device_id: (entry.phase, entry.status) for entry in page.items}
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def request(**changes: Any) -> DeploymentRequest:
    values: dict[str, Any] = {
        "name": "roll out fw 2.0",
        "release_name": "fw",
        "release_version": "2.0",
        "target": {"group": "fleet"},
    }
    values.update(changes)
    return DeploymentRequest(**values)

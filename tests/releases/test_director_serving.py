"""The director on the server: per-device metadata, signed by the online director keys under the
fleet-wide director root, served to that device only, re-signed by the background job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from tuf.api.metadata import Metadata

from fleetkeeper.core.direct import DirectStatements
from fleetkeeper.core.metrics import REQUESTS
from fleetkeeper.deployments.director import files
from fleetkeeper.devices.models import Device
from fleetkeeper.releases.keys import init_keys
from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json
from tests.conftest import Api
from tests.helpers.devices import FakeDevice, accepted_device, device_client
from tests.helpers.releases import a_release


async def initialize(api: Api, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys, threshold=1, count=1)
    online = online_keys_from_json(api.runtime.online_keys.public_keys())
    trust = build_initial_trust(keys, online, datetime.now(UTC).replace(microsecond=0) + timedelta(days=365))
    admin = await api.admin_headers()
    response = await api.client.post(
        "/api/v1/repository/trust",
        json={
            "root": trust.root.to_dict(),
            "targets": trust.targets.to_dict(),
            "director_root": trust.director_root.to_dict(),
        },
        headers=admin,
    )
    assert response.status_code == 201, response.text
    again = await api.client.post(
        "/api/v1/repository/trust",
        json={
            "root": trust.root.to_dict(),
            "targets": trust.targets.to_dict(),
            "director_root": trust.director_root.to_dict(),
        },
        headers=admin,
    )
    assert again.json()["code"] == "already_initialized"


async def fetch(api: Api, certificate: str | None, name: str) -> Metadata:  # type: ignore[type-arg]
    async with device_client(api.runtime, certificate) as client:
        response = await client.get(f"/device/v1/director/metadata/{name}")
    assert response.status_code == 200, response.text
    return Metadata.from_bytes(response.content)


async def test_each_device_gets_its_own_signed_director_metadata(api: Api, tmp_path: Path) -> None:
    await initialize(api, tmp_path)
    mine, theirs = await accepted_device(api), await accepted_device(api)
    await a_release(api)
    # The director lists what the device's deployment wants (checked at each timestamp refresh).
    deployed = await api.client.post(
        "/api/v1/deployments",
        json={"name": "d", "release": "fw", "version": "2.0", "target": {"devices": [mine.device_id]}},
        headers=await api.admin_headers(),
    )
    assert deployed.status_code == 201, deployed.text

    root = await fetch(api, mine.certificate, "1.root.json")
    timestamp = await fetch(api, mine.certificate, "timestamp.json")
    root.signed.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    snapshot = await fetch(api, mine.certificate, f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    root.signed.verify_delegate("snapshot", snapshot.signed_bytes, snapshot.signatures)
    targets = await fetch(
        api, mine.certificate, f"{snapshot.signed.meta['targets.json'].version}.targets.json"
    )
    root.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    assert list(targets.signed.targets) == ["fw/2.0/fw.bin"]
    assert targets.signed.targets["fw/2.0/fw.bin"].custom["fleetkeeper"] == {
        "device_id": mine.device_id,
        "device_type": "rpi4",
        "release_counter": 7,
    }
    assert timestamp.signed.expires > datetime.now(UTC)
    again = await fetch(api, mine.certificate, "timestamp.json")
    assert again.signed.version == timestamp.signed.version, "an unchanged check-in re-signs nothing"

    their_targets = await fetch(api, theirs.certificate, "1.targets.json")
    assert their_targets.signed.targets == {}, "another device sees only its own assignment"
    async with device_client(api.runtime, None) as client:
        assert (await client.get("/device/v1/director/metadata/timestamp.json")).status_code == 401
    async with device_client(api.runtime, mine.certificate) as client:
        old = await client.get("/device/v1/director/metadata/99.targets.json")
    assert old.status_code == 404


async def test_the_background_job_re_signs_before_expiry(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await initialize(api, tmp_path)
    device = await accepted_device(api)
    first = await fetch(api, device.certificate, "timestamp.json")
    assert await files.refresh_due_metadata(api.runtime) == 0, "nothing is due yet"
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=20)
    monkeypatch.setattr(files, "signing_time", lambda: later)
    assert await files.refresh_due_metadata(api.runtime) >= 2, "image timestamp and the device's"
    second = await fetch(api, device.certificate, "timestamp.json")
    assert second.signed.version == first.signed.version + 1
    assert second.signed.expires > first.signed.expires
    async with api.runtime.database.session() as session:
        from fleetkeeper.releases.repository import IMAGE, latest

        image_timestamp = await latest(session, IMAGE, "timestamp")
    assert image_timestamp is not None
    assert image_timestamp.signed.expires > later


@contextmanager
def statements_run() -> Iterator[list[str]]:
    """The SQL statements every engine runs meanwhile, and the hot path's direct ones."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement.lstrip().split(None, 1)[0].upper())

    def recording(method: Any) -> Any:
        async def run(self: DirectStatements, statement: Any, *args: Any, **kwargs: Any) -> Any:
            record(None, None, self.compiled(statement).sql)
            return await method(self, statement, *args, **kwargs)

        return run

    event.listen(Engine, "before_cursor_execute", record)
    # The hot path's statements that bypass SQLAlchemy's engine (core/direct.py).
    direct_methods = {"fetch_row": DirectStatements.fetch_row, "execute": DirectStatements.execute}
    for name, method in direct_methods.items():
        setattr(DirectStatements, name, recording(method))
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)
        for name, method in direct_methods.items():
            setattr(DirectStatements, name, method)


async def test_an_unchanged_check_in_is_one_read_and_no_write(api: Api, tmp_path: Path) -> None:
    await initialize(api, tmp_path)
    device = await accepted_device(api)
    await a_release(api)
    deployed = await api.client.post(
        "/api/v1/deployments",
        json={"name": "d", "release": "fw", "version": "2.0", "target": {"devices": [device.device_id]}},
        headers=await api.admin_headers(),
    )
    assert deployed.status_code == 201, deployed.text
    with statements_run() as first:
        signed = await fetch(api, device.certificate, "timestamp.json")
    assert {"INSERT", "UPDATE"} & set(first), "the first check-in signs and records last seen"
    with statements_run() as again:
        unchanged = await fetch(api, device.certificate, "timestamp.json")
    assert unchanged.signed.version == signed.signed.version
    # Device, certificate, director state and the deployments' assignment in one statement, and
    # on PostgreSQL no liveness probe before it.
    assert [kind for kind in again if kind not in ("BEGIN", "COMMIT", "ROLLBACK")] == ["SELECT"]


async def assigned(api: Api, device: FakeDevice) -> tuple[int, list[str]]:
    """A check-in: the timestamp's version, and the targets the director lists for the device."""
    timestamp = await fetch(api, device.certificate, "timestamp.json")
    snapshot = await fetch(api, device.certificate, f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    targets = await fetch(
        api, device.certificate, f"{snapshot.signed.meta['targets.json'].version}.targets.json"
    )
    return timestamp.signed.version, list(targets.signed.targets)


async def test_the_check_in_after_each_change_of_deployment_gets_new_metadata(
    api: Api, tmp_path: Path
) -> None:
    """Nothing is kept between check-ins: the one after a change sees it, whichever way it came."""
    await initialize(api, tmp_path)
    device, other = await accepted_device(api), await accepted_device(api)
    await a_release(api)
    admin = await api.admin_headers()
    assert (await assigned(api, device))[1] == []
    body = {"name": "d", "release": "fw", "version": "2.0", "target": {"devices": [device.device_id]}}
    deployment = (await api.client.post("/api/v1/deployments", json=body, headers=admin)).json()
    version, targets = await assigned(api, device)
    assert targets == ["fw/2.0/fw.bin"]
    assert await assigned(api, device) == (version, targets), "unchanged: the same metadata"
    steps = [("pause", []), ("resume", ["fw/2.0/fw.bin"]), ("abort", [])]
    for action, expected in steps:
        changed = await api.client.post(f"/api/v1/deployments/{deployment['id']}/{action}", headers=admin)
        assert changed.status_code == 200, changed.text
        newer, targets = await assigned(api, device)
        assert (newer > version, targets) == (True, expected), action
        version = newer
    # A download cap: the device that checked in before another took the only slot waits.
    body = {**body, "name": "capped", "target": {"devices": [device.device_id, other.device_id]}}
    capped = await api.client.post("/api/v1/deployments", json={**body, "max_downloading": 1}, headers=admin)
    assert capped.status_code == 201, capped.text
    version, targets = await assigned(api, device)
    assert targets == ["fw/2.0/fw.bin"]
    assert (await assigned(api, other))[1] == ["fw/2.0/fw.bin"]
    async with device_client(api.runtime, other.certificate) as client:
        report = {"status": "downloading", "seq": 1, "detail": None}
        took = await client.post(f"/device/v1/deployments/{capped.json()['id']}/status", json=report)
    assert took.status_code == 200, took.text
    newer, targets = await assigned(api, device)
    assert (newer > version, targets) == (True, [])
    # The device's inventory says it runs the release: the check-in records that and lists nothing.
    async with device_client(api.runtime, other.certificate) as client:
        report = {"status": "failure", "seq": 2, "detail": "disk full"}
        assert (
            await client.post(f"/device/v1/deployments/{capped.json()['id']}/status", json=report)
        ).status_code == 200
    version, targets = await assigned(api, device)
    assert targets == ["fw/2.0/fw.bin"], "the slot is free again"
    async with device_client(api.runtime, device.certificate) as client:
        inventory = {"release": {"name": "fw", "version": "2.0"}}
        assert (await client.put("/device/v1/inventory", json=inventory)).status_code == 204
    newer, targets = await assigned(api, device)
    assert (newer > version, targets) == (True, [])
    status = await api.client.get(
        f"/api/v1/deployments/{capped.json()['id']}/devices/{device.device_id}", headers=admin
    )
    assert status.json()["status"] == "already_installed"


async def test_a_check_in_is_refused_once_the_device_or_its_certificate_is_not_good(api: Api) -> None:
    revoked, rejected = await accepted_device(api), await accepted_device(api)
    for device in (revoked, rejected):
        await fetch(api, device.certificate, "timestamp.json")
    admin = await api.admin_headers()
    decommissioned = await api.client.post(f"/api/v1/devices/{revoked.device_id}/decommission", headers=admin)
    assert decommissioned.status_code == 200, decommissioned.text
    async with api.runtime.database.transaction() as session:
        await session.execute(update(Device).where(Device.id == rejected.device_id).values(status="rejected"))
    for device, code in ((revoked, "certificate_revoked"), (rejected, "device_not_accepted")):
        async with device_client(api.runtime, device.certificate) as client:
            response = await client.get("/device/v1/director/metadata/timestamp.json")
        assert (response.status_code, response.json()["code"]) == (401, code)


async def test_a_check_in_answered_before_routing_is_named_by_its_route(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged check-in and ping are answered by their hot handlers (core/hotroutes.py),
    never reaching FastAPI's routes: in the metrics each is still its route's template."""
    device = await accepted_device(api)
    await fetch(api, device.certificate, "timestamp.json")
    routed: list[str] = []
    handle = APIRoute.handle

    async def counted(route: APIRoute, scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await handle(route, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", counted)

    def served(route: str, status: str) -> float:
        return REQUESTS.labels("device", "GET", route, status)._value.get()

    check_in, ping = "/device/v1/director/metadata/{filename}", "/device/v1/ping"
    before = (served(check_in, "200"), served(ping, "204"))
    async with device_client(api.runtime, device.certificate) as client:
        timestamp = await client.get("/device/v1/director/metadata/timestamp.json")
        pinged = await client.get("/device/v1/ping")
    assert (timestamp.status_code, pinged.status_code) == (200, 204)
    assert routed == []
    assert timestamp.headers["content-type"] == "application/json"
    assert timestamp.headers["cache-control"] == "no-store"
    assert (served(check_in, "200"), served(ping, "204")) == (before[0] + 1, before[1] + 1)

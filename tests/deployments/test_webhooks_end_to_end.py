"""Webhooks end to end: registered through the API, fed by a deployment that real (fake) devices
drive through the device API until its failure threshold pauses it and then until it finishes,
delivered by the delivery job to an HTTP receiver on loopback, signed, and retried with back-off
when the receiver fails."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta

import httpx2
import pytest
from sqlalchemy import select

from fleetkeeper.core.db import utcnow
from fleetkeeper.deployments import clock as deployments_clock
from fleetkeeper.deployments.webhook_models import WebhookDelivery
from fleetkeeper.deployments.webhooks import EVENTS, deliver_due
from tests.conftest import RuntimeFactory, api_for
from tests.deployments.test_live import deploy, rows, shown
from tests.helpers.deployments import send
from tests.helpers.devices import accepted_device
from tests.helpers.releases import a_release
from tests.helpers.webhooks import Receiver


class Clock:
    """The deployments service's clock, moved by the test."""

    def __init__(self) -> None:
        # Ahead of the wall clock: deliveries are due from the moment they are queued (wall time).
        self.now = utcnow() + timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now


async def test_deployment_events_reach_a_receiver_signed_and_retried(
    runtime_factory: RuntimeFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(deployments_clock, "now", clock)
    runtime = await runtime_factory(webhook_allow_private_targets=True)
    async with api_for(runtime) as api, httpx2.AsyncClient() as client:
        headers = await api.admin_headers()
        registered = await api.client.post(
            "/api/v1/webhooks",
            json={"url": receiver.url, "events": list(EVENTS), "description": "ops"},
            headers=headers,
        )
        assert registered.status_code == 201, registered.text
        secret = registered.json()["secret"]

        async def run_delivery_job() -> tuple[int, int, int]:
            stats = await deliver_due(runtime.database, now=deployments_clock.now(), client=client)
            return stats.attempted, stats.delivered, stats.retrying

        await a_release(api)
        devices = [await accepted_device(api, headers) for _ in range(4)]
        await api.client.post("/api/v1/device-groups", json={"name": "fleet"}, headers=headers)
        added = await api.client.post(
            "/api/v1/device-groups/fleet/devices",
            json={"devices": [d.device_id for d in devices]},
            headers=headers,
        )
        assert added.status_code == 204, added.text
        deployment = await deploy(
            api,
            headers,
            target={"group": "fleet"},
            phases=[{"size": {"count": 1}}, {"size": {"percent": 100}}],
            failure_threshold={"phase": {"count": 1}},
        )
        placed = await rows(api, deployment["id"])
        (canary,) = [d for d in devices if placed[d.device_id or ""][0] == 0]
        rest = [d for d in devices if d is not canary]
        assert await run_delivery_job() == (0, 0, 0), "nothing happened yet"

        # The canary fails: past the threshold, the deployment pauses.
        failed = await send(api, canary, deployment["id"], "failure", 1, detail="health check failed")
        assert failed.status_code == 200, failed.text
        assert (await shown(api, headers, deployment["id"]))["status"] == "paused"

        # The receiver fails its first request: that delivery is retried after its back-off.
        receiver.fail = 1
        assert await run_delivery_job() == (2, 1, 1)
        async with runtime.database.session() as session:
            (retrying,) = (
                await session.scalars(select(WebhookDelivery).where(WebhookDelivery.last_error.is_not(None)))
            ).all()
        assert (retrying.attempts, retrying.last_error) == (1, "HTTP 500")
        assert retrying.next_attempt_at is not None
        assert (
            clock.now + timedelta(seconds=27) <= retrying.next_attempt_at <= clock.now + timedelta(seconds=33)
        )
        clock.now += timedelta(seconds=20)
        assert await run_delivery_job() == (0, 0, 0), "not due before its back-off"
        clock.now = retrying.next_attempt_at
        assert await run_delivery_job() == (1, 1, 0)

        # The operator moves past the canary's phase and resumes; the others succeed.
        for action in ("advance", "resume"):
            moved = await api.client.post(f"/api/v1/deployments/{deployment['id']}/{action}", headers=headers)
            assert moved.status_code == 200, moved.text
        for device in rest:
            assert (await send(api, device, deployment["id"], "success", 1)).status_code == 200
        assert (await shown(api, headers, deployment["id"]))["status"] == "finished"
        clock.now += timedelta(minutes=5)
        assert await run_delivery_job() == (1, 1, 0)
        assert await run_delivery_job() == (0, 0, 0), "each event is delivered once"

    received = receiver.requests
    for request in received:
        timestamp = request.headers["x-fleetkeeper-timestamp"]
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256)
        assert request.headers["x-fleetkeeper-signature"] == "sha256=" + expected.hexdigest()
        assert json.loads(request.body)["deployment_id"] == deployment["id"]
    # Four requests: the threshold and pause events (one of them refused once), its retry, and the end.
    assert len(received) == 4
    first_try, retry = [r for r in received if r.headers["x-fleetkeeper-delivery"] == retrying.id]
    assert (
        int(retry.headers["x-fleetkeeper-timestamp"]) - int(first_try.headers["x-fleetkeeper-timestamp"])
        >= 27
    )
    assert sorted(r.headers["x-fleetkeeper-event"] for r in received if r is not first_try) == [
        "deployment.failure_threshold_reached",
        "deployment.finished",
        "deployment.paused",
    ]
    finished = json.loads(received[-1].body)
    assert received[-1].headers["x-fleetkeeper-event"] == "deployment.finished"
    assert finished["counts"] == {"failure": 1, "success": 3}

"""Webhooks against a real HTTP receiver on loopback: signatures, retries, the outbox, replicas."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx2
import pytest
from sqlalchemy import select

from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.audit.service import Actor
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.deployments.webhook_models import Webhook, WebhookDelivery
from fleetkeeper.deployments.webhooks import (
    MAX_ATTEMPTS,
    create_webhook,
    delete_webhook,
    deliver_due,
    enqueue,
    list_webhooks,
    verify_signature,
)
from tests.helpers.webhooks import Receiver

ALICE = Actor(kind="user", id="usr_alice", name="alice", address="203.0.113.9")


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


async def hook(database: Database, url: str, events: list[str] | None = None) -> tuple[Webhook, str]:
    return await create_webhook(
        database,
        ALICE,
        url=url,
        events=events or ["deployment.paused", "deployment.finished"],
        description="ops channel",
        allow_private=True,
    )


async def enqueue_one(database: Database, event: str = "deployment.paused", **payload: object) -> None:
    async with database.transaction() as session:
        await enqueue(session, event, {"deployment_id": "dep_1", **payload})


async def deliveries(database: Database) -> list[WebhookDelivery]:
    async with database.session() as session:
        return list((await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))).all())


async def test_an_enqueued_event_arrives_once_signed(
    database: Database, receiver: Receiver, client: httpx2.AsyncClient
) -> None:
    webhook, secret = await hook(database, receiver.url)
    await enqueue_one(database, phase=2)
    [pending] = await deliveries(database)

    stats = await deliver_due(database, now=utcnow(), client=client)
    assert (stats.attempted, stats.delivered) == (1, 1)
    again = await deliver_due(database, now=utcnow() + timedelta(days=1), client=client)
    assert again.attempted == 0

    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-fleetkeeper-event"] == "deployment.paused"
    assert request.headers["x-fleetkeeper-delivery"] == pending.id
    timestamp = request.headers["x-fleetkeeper-timestamp"]
    assert abs(int(timestamp) - utcnow().timestamp()) < 60
    signature = request.headers["x-fleetkeeper-signature"]
    assert verify_signature(secret, timestamp, request.body, signature)
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert json.loads(request.body) == {"deployment_id": "dep_1", "phase": 2}
    # Anything changed fails verification: the body, the timestamp, the secret.
    assert not verify_signature(secret, timestamp, request.body + b" ", signature)
    assert not verify_signature(secret, str(int(timestamp) + 1), request.body, signature)
    assert not verify_signature(secret + "x", timestamp, request.body, signature)

    [done] = await deliveries(database)
    assert done.delivered_at is not None
    assert (done.attempts, done.next_attempt_at, done.failed_at, done.last_error) == (1, None, None, None)
    assert done.webhook_id == webhook.id


async def test_only_subscribed_enabled_webhooks_get_a_delivery(
    database: Database, receiver: Receiver
) -> None:
    paused, _ = await hook(database, receiver.url, ["deployment.paused"])
    await hook(database, receiver.url, ["deployment.finished"])
    disabled, _ = await hook(database, receiver.url, ["deployment.paused"])
    async with database.transaction() as session:
        row = await session.get(Webhook, disabled.id)
        assert row is not None
        row.disabled = True
    await enqueue_one(database, "deployment.paused")
    assert [delivery.webhook_id for delivery in await deliveries(database)] == [paused.id]
    async with database.transaction() as session:
        with pytest.raises(ValueError, match="unknown webhook event"):
            await enqueue(session, "deployment.exploded", {})


async def test_a_failing_receiver_is_retried_at_the_back_off_times(
    database: Database, receiver: Receiver, client: httpx2.AsyncClient
) -> None:
    await hook(database, receiver.url)
    await enqueue_one(database)
    receiver.fail = 2

    first = utcnow()
    assert (await deliver_due(database, now=first, client=client)).retrying == 1
    [row] = await deliveries(database)
    assert row.attempts == 1
    assert row.last_error == "HTTP 500"
    assert row.next_attempt_at is not None
    assert first + timedelta(seconds=27) <= row.next_attempt_at <= first + timedelta(seconds=33)
    # Not due before its time: nothing is sent.
    assert (await deliver_due(database, now=first + timedelta(seconds=26), client=client)).attempted == 0
    assert len(receiver.requests) == 1

    second = row.next_attempt_at
    assert (await deliver_due(database, now=second, client=client)).retrying == 1
    [row] = await deliveries(database)
    assert row.attempts == 2
    assert row.next_attempt_at is not None
    assert second + timedelta(seconds=54) <= row.next_attempt_at <= second + timedelta(seconds=66)

    assert (await deliver_due(database, now=row.next_attempt_at, client=client)).delivered == 1
    [row] = await deliveries(database)
    assert (row.attempts, row.last_error, row.next_attempt_at) == (3, None, None)
    assert row.delivered_at is not None
    assert len(receiver.requests) == 3
    assert {request.headers["x-fleetkeeper-delivery"] for request in receiver.requests} == {row.id}


async def test_gives_up_after_ten_attempts(
    database: Database, receiver: Receiver, client: httpx2.AsyncClient
) -> None:
    await hook(database, receiver.url)
    await enqueue_one(database)
    receiver.fail = 1000
    now = utcnow()
    waits: list[timedelta] = []
    for _ in range(MAX_ATTEMPTS):
        stats = await deliver_due(database, now=now, client=client)
        assert stats.attempted == 1
        [row] = await deliveries(database)
        if row.next_attempt_at is not None:
            waits.append(row.next_attempt_at - now)
            now = row.next_attempt_at
    assert stats.failed == 1
    assert len(receiver.requests) == MAX_ATTEMPTS
    [row] = await deliveries(database)
    assert row.failed_at == now
    assert (row.attempts, row.next_attempt_at, row.delivered_at, row.last_error) == (
        10,
        None,
        None,
        "HTTP 500",
    )
    # Doubling from 30 s, capped at an hour, each within ±10 %.
    for attempt, wait in enumerate(waits, start=1):
        base = min(30 * 2 ** (attempt - 1), 3600)
        assert base * 0.9 <= wait.total_seconds() <= base * 1.1
    assert (await deliver_due(database, now=now + timedelta(days=30), client=client)).attempted == 0
    assert len(receiver.requests) == MAX_ATTEMPTS


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    database: Database, receiver: Receiver, client: httpx2.AsyncClient
) -> None:
    await hook(database, receiver.url)
    await enqueue_one(database)
    receiver.delay = 2.0
    stats = await deliver_due(database, now=utcnow(), client=client, request_timeout=0.2)
    assert stats.retrying == 1
    [row] = await deliveries(database)
    assert row.last_error is not None
    assert "timed out" in row.last_error


async def test_an_unreachable_receiver_is_retried(database: Database, client: httpx2.AsyncClient) -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    await hook(database, f"http://127.0.0.1:{port}/hook")
    await enqueue_one(database)
    assert (await deliver_due(database, now=utcnow(), client=client)).retrying == 1
    [row] = await deliveries(database)
    assert row.last_error is not None
    assert row.last_error.startswith("ConnectError")


async def test_an_enqueue_rolled_back_sends_nothing(
    database: Database, receiver: Receiver, client: httpx2.AsyncClient
) -> None:
    await hook(database, receiver.url)

    class AbortError(Exception):
        pass

    async def change_that_fails() -> None:
        async with database.transaction() as session:
            created = await enqueue(session, "deployment.finished", {"deployment_id": "dep_1"})
            assert len(created) == 1
            raise AbortError

    with pytest.raises(AbortError):
        await change_that_fails()
    assert await deliveries(database) == []
    assert (await deliver_due(database, now=utcnow() + timedelta(hours=1), client=client)).attempted == 0
    assert receiver.requests == []


async def test_two_replicas_send_each_delivery_once(
    database: Database, receiver: Receiver, client: httpx2.AsyncClient
) -> None:
    """Two Database objects (two engines, as two replicas have) on the same database, at once."""
    await hook(database, receiver.url)
    await hook(database, receiver.url)
    for number in range(15):
        await enqueue_one(database, number=number)
    expected = sorted(delivery.id for delivery in await deliveries(database))
    assert len(expected) == 30
    receiver.delay = 0.01  # keeps the first replica's sends in flight while the second one claims
    other = Database(database.url)
    try:
        now = utcnow()
        stats = await asyncio.gather(
            deliver_due(database, now=now, client=client, limit=20),
            deliver_due(other, now=now, client=client, limit=20),
            deliver_due(other, now=now, client=client, limit=20),
        )
    finally:
        await other.dispose()
    sent = sorted(request.headers["x-fleetkeeper-delivery"] for request in receiver.requests)
    assert sent == expected
    assert sum(result.delivered for result in stats) == 30
    assert all(delivery.delivered_at is not None for delivery in await deliveries(database))


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "hooks.example.com/x",
        "http://",
        "https:///path",
        "https://user:pass@hooks.example.com/x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com/ x",
        "https://hooks.example.com/\nx",
        "https://hooks.example.com/" + "x" * 2100,
    ],
)
async def test_bad_urls_are_refused(database: Database, url: str) -> None:
    with pytest.raises(ProblemError) as caught:
        await create_webhook(
            database, ALICE, url=url, events=["deployment.paused"], description="", allow_private=True
        )
    assert (caught.value.code, caught.value.status) == ("invalid_webhook", 422)


@pytest.mark.parametrize(
    "events", [[], ["deployment.exploded"], ["deployment.paused", "device.accepted"], "deployment.paused"]
)
async def test_bad_events_are_refused(database: Database, events: list[str]) -> None:
    with pytest.raises(ProblemError) as caught:
        await create_webhook(
            database, ALICE, url="https://hooks.example.com/x", events=events, description=""
        )
    assert (caught.value.code, caught.value.status) == ("invalid_webhook", 422)
    async with database.session() as session:
        assert await list_webhooks(session) == []


async def test_a_public_url_with_events_is_accepted_and_events_normalised(database: Database) -> None:
    webhook, secret = await create_webhook(
        database,
        ALICE,
        url="https://hooks.example.com:8443/fleet?x=1",
        events=["deployment.finished", "deployment.paused", "deployment.finished"],
        description="",
    )
    assert webhook.id.startswith("whk_")
    assert webhook.events == ["deployment.paused", "deployment.finished"]
    assert len(secret) >= 43
    assert webhook.created_by == ALICE.id


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://127.1/x",
        "http://2130706433/x",
        "http://0x7f000001/x",
        "http://0.0.0.0/x",
        "http://localhost:8080/x",
        "http://LOCALHOST./x",
        "http://api.localhost/x",
        "https://10.1.2.3/x",
        "https://172.16.0.1/x",
        "https://192.168.1.10/x",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/x",
        "http://[::1]/x",
        "http://[fe80::1]/x",
        "http://[fd00::1]/x",
        "http://[::ffff:127.0.0.1]/x",
    ],
)
async def test_private_targets_are_refused_unless_allowed(database: Database, url: str) -> None:
    with pytest.raises(ProblemError) as caught:
        await create_webhook(database, ALICE, url=url, events=["deployment.paused"], description="")
    assert (caught.value.code, caught.value.status) == ("invalid_webhook", 422)
    webhook, _ = await create_webhook(
        database, ALICE, url=url, events=["deployment.paused"], description="", allow_private=True
    )
    assert webhook.url == url


async def test_create_and_delete_are_audited_without_the_secret(
    database: Database, receiver: Receiver
) -> None:
    webhook, secret = await hook(database, receiver.url)
    await enqueue_one(database)
    async with database.session() as session:
        assert [listed.id for listed in await list_webhooks(session)] == [webhook.id]
    await delete_webhook(database, ALICE, webhook.id)
    with pytest.raises(ProblemError) as caught:
        await delete_webhook(database, ALICE, webhook.id)
    assert caught.value.status == 404

    assert await deliveries(database) == []  # removed with their webhook
    async with database.session() as session:
        records = list((await session.scalars(select(AuditRecord).order_by(AuditRecord.seq))).all())
        assert await list_webhooks(session) == []
    assert [(r.action, r.object_id, r.actor_id) for r in records] == [
        ("webhook.created", webhook.id, ALICE.id),
        ("webhook.deleted", webhook.id, ALICE.id),
    ]
    assert records[0].details_object() == {
        "url": receiver.url,
        "events": ["deployment.paused", "deployment.finished"],
        "description": "ops channel",
    }
    for record in records:
        for value in vars(record).values():
            assert secret not in str(value)


async def test_deliveries_before_now_only(
    database: Database, receiver: Receiver, client: httpx2.AsyncClient
) -> None:
    await hook(database, receiver.url)
    await enqueue_one(database)
    past: datetime = utcnow() - timedelta(minutes=5)
    assert (await deliver_due(database, now=past, client=client)).attempted == 0
    assert receiver.requests == []

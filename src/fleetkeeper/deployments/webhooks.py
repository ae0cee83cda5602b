"""Webhooks: operators' endpoints for deployment events, fed from a transactional outbox.

`enqueue` writes one delivery per subscribed webhook inside the caller's transaction, so a delivery
exists if and only if the change it reports committed. `deliver_due` sends them later, signed with
the webhook's secret, and retries with exponential back-off. See docs/deployments.md ("Webhooks").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx2
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.audit.service import Actor, record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.logging import get_logger
from fleetkeeper.deployments.webhook_models import Webhook, WebhookDelivery

EVENTS = ("deployment.paused", "deployment.finished", "deployment.failure_threshold_reached")

MAX_ATTEMPTS = 10
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)
JITTER = 0.1  # ±10 %: replicas and webhooks that failed together do not all retry in the same second
DELIVERY_TIMEOUT = 10.0  # seconds, per request
# A claimed delivery is not due again for this long: the claiming process must send it and record
# the outcome within it. Generous, since a batch is sent CONCURRENCY at a time with DELIVERY_TIMEOUT
# each; if the process dies, another replica retries once the lease has run out.
CLAIM_LEASE = timedelta(minutes=10)
CONCURRENCY = 10
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 200
_ERROR_LIMIT = 500

SIGNATURE_PREFIX = "sha256="
EVENT_HEADER = "X-Fleetkeeper-Event"
DELIVERY_HEADER = "X-Fleetkeeper-Delivery"
TIMESTAMP_HEADER = "X-Fleetkeeper-Timestamp"
SIGNATURE_HEADER = "X-Fleetkeeper-Signature"

log = get_logger(__name__)
_random = secrets.SystemRandom()


# --- registration -----------------------------------------------------------------------------


def _invalid(detail: str) -> ProblemError:
    return ProblemError(detail, code="invalid_webhook", status=422)


async def create_webhook(
    database: Database,
    actor: Actor,
    *,
    url: str,
    events: Sequence[str],
    description: str = "",
    allow_private: bool = False,
) -> tuple[Webhook, str]:
    """Registers an endpoint; returns it and its signing secret, which is shown this once.

    `allow_private` is the `webhook_allow_private_targets` setting: without it, URLs naming
    loopback, private or link-local addresses (or localhost) are refused, so that a webhook cannot
    be used to make the server probe its own network.
    """
    check_url(url, allow_private=allow_private)
    chosen = _check_events(events)
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise _invalid(f"the description is longer than {MAX_DESCRIPTION_LENGTH} characters")
    secret = secrets.token_urlsafe(32)
    webhook = Webhook(
        id=new_id("whk"),
        url=url,
        events=chosen,
        secret=secret,
        description=description,
        created_by=actor.id,
        disabled=False,
    )
    async with database.transaction() as session:
        session.add(webhook)
        await session.flush()
        # The secret stays out of the record: the audit log is readable by more people than the
        # webhook's owner, and exported.
        await record(
            session,
            actor=actor,
            action="webhook.created",
            object_type="webhook",
            object_id=webhook.id,
            details={"url": url, "events": chosen, "description": description},
        )
    return webhook, secret


async def list_webhooks(session: AsyncSession) -> list[Webhook]:
    """Every webhook, oldest first. The rows carry the secret: callers must not return it."""
    return list((await session.scalars(select(Webhook).order_by(Webhook.id))).all())


async def delete_webhook(database: Database, actor: Actor, webhook_id: str) -> None:
    """Removes a webhook and (by cascade) its deliveries, pending or not."""
    async with database.transaction() as session:
        webhook = await session.get(Webhook, webhook_id)
        if webhook is None:
            raise NotFoundError("no such webhook", code="webhook_not_found")
        details = {"url": webhook.url, "events": list(webhook.events)}
        await session.execute(delete(Webhook).where(Webhook.id == webhook_id))
        await record(
            session,
            actor=actor,
            action="webhook.deleted",
            object_type="webhook",
            object_id=webhook_id,
            details=details,
        )


def check_url(url: str, *, allow_private: bool) -> None:
    """Raises invalid_webhook unless `url` is an absolute http(s) URL we are willing to call.

    Only the literal host is judged: a name that resolves to a private address is not caught
    (that would need the check at connection time).
    """
    if not url or len(url) > MAX_URL_LENGTH:
        raise _invalid(f"the URL must be 1 to {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise _invalid("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise _invalid(f"the URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid("the URL must start with http:// or https://")
    if not host:
        raise _invalid("the URL names no host")
    # Credentials in the URL would be shown to everyone who may list webhooks; the signature is
    # what authenticates us to the receiver.
    if parts.username is not None or parts.password is not None:
        raise _invalid("the URL must not carry a user name or password")
    if not allow_private and _is_private_host(host):
        raise _invalid(
            "the URL points at a loopback, private or link-local address; "
            "allow private targets in the settings for on-premises receivers"
        )


def _is_private_host(host: str) -> bool:
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _ip_literal(host)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or address in ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: internal too
    )


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    # The resolver also reads "127.1", "0x7f000001" and "2130706433" as IPv4 addresses; so do we,
    # or they would slip past the check above.
    if all(ch in "0123456789abcdefx." for ch in host) and any(ch.isdigit() for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _check_events(events: Sequence[str]) -> list[str]:
    if isinstance(events, str) or not events:
        raise _invalid(f"events must be a non-empty list of: {', '.join(EVENTS)}")
    unknown = [event for event in events if event not in EVENTS]
    if unknown:
        raise _invalid(f"unknown events {unknown}; known: {', '.join(EVENTS)}")
    return [event for event in EVENTS if event in events]


# --- outbox -----------------------------------------------------------------------------------


async def enqueue(session: AsyncSession, event: str, payload: Mapping[str, Any]) -> list[WebhookDelivery]:
    """One delivery per enabled webhook subscribed to `event`, in the caller's transaction."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    # Checked now, so that a payload that cannot be sent fails the change, not the sender later.
    body = dict(payload)
    json.dumps(body)
    webhooks = (await session.scalars(select(Webhook).where(Webhook.disabled.is_(False)))).all()
    # Subscriptions are a short JSON list; filtered here rather than in SQL, alike on both backends.
    deliveries = [
        WebhookDelivery(
            id=new_id("wdl"),
            webhook_id=webhook.id,
            event=event,
            payload=body,
            attempts=0,
            next_attempt_at=utcnow(),  # due at once
        )
        for webhook in webhooks
        if event in webhook.events
    ]
    session.add_all(deliveries)
    await session.flush()
    return deliveries


# --- delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryStats:
    attempted: int = 0
    delivered: int = 0
    retrying: int = 0  # failed this time, scheduled again
    failed: int = 0  # failed for the last time: given up


@dataclass(frozen=True)
class _Claimed:
    id: str
    event: str
    payload: dict[str, Any]
    attempt: int  # this attempt's number, 1-based
    url: str
    secret: str


@dataclass(frozen=True)
class _Outcome:
    claimed: _Claimed
    error: str | None  # None: delivered


async def deliver_due(
    database: Database,
    *,
    now: datetime,
    client: httpx2.AsyncClient,
    limit: int = 100,
    request_timeout: float = DELIVERY_TIMEOUT,
) -> DeliveryStats:
    """Sends up to `limit` deliveries due at `now` and records each outcome.

    Safe to run on every replica at once: the due rows are claimed in a short transaction (locked
    with FOR UPDATE SKIP LOCKED on PostgreSQL, under SQLite's write lock) by moving their next
    attempt a lease ahead, so no other caller sees them as due while they are being sent; the
    requests themselves are made outside any transaction.
    """
    claimed = await _claim(database, now=now, limit=limit)
    if not claimed:
        return DeliveryStats()
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def send(item: _Claimed) -> _Outcome:
        async with semaphore:
            return _Outcome(item, await _send(client, item, now=now, request_timeout=request_timeout))

    outcomes = await asyncio.gather(*(send(item) for item in claimed))
    return await _record_outcomes(database, outcomes, now=now)


async def _claim(database: Database, *, now: datetime, limit: int) -> list[_Claimed]:
    async with database.transaction() as session:
        query = (
            select(WebhookDelivery, Webhook.url, Webhook.secret)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(
                WebhookDelivery.next_attempt_at <= now,
                WebhookDelivery.delivered_at.is_(None),
                WebhookDelivery.failed_at.is_(None),
                Webhook.disabled.is_(False),
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )
        rows = (await session.execute(query)).all()
        claimed = []
        for delivery, url, secret in rows:
            # The attempt is counted when claimed, so that a delivery whose sending kills the
            # process still runs out of attempts instead of being retried forever.
            delivery.attempts += 1
            delivery.next_attempt_at = now + CLAIM_LEASE
            claimed.append(
                _Claimed(delivery.id, delivery.event, dict(delivery.payload), delivery.attempts, url, secret)
            )
    return claimed


async def _send(
    client: httpx2.AsyncClient, item: _Claimed, *, now: datetime, request_timeout: float
) -> str | None:
    """The error of one attempt, or None when the receiver answered 2xx."""
    body = json.dumps(item.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(now.timestamp()))
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: item.event,
        DELIVERY_HEADER: item.id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(item.secret, timestamp, body),
    }
    try:
        # Redirects are not followed: they could lead to an address the URL check would refuse.
        response = await client.post(
            item.url, content=body, headers=headers, timeout=request_timeout, follow_redirects=False
        )
    except httpx2.TimeoutException:
        return f"timed out after {request_timeout:g} s"
    except httpx2.HTTPError as exc:
        return _clip(f"{type(exc).__name__}: {exc}")
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


async def _record_outcomes(
    database: Database, outcomes: Sequence[_Outcome], *, now: datetime
) -> DeliveryStats:
    delivered = retrying = failed = 0
    async with database.transaction() as session:
        for outcome in outcomes:
            item = outcome.claimed
            values: dict[str, Any]
            if outcome.error is None:
                values = {"delivered_at": now, "next_attempt_at": None, "last_error": None}
                delivered += 1
            elif item.attempt >= MAX_ATTEMPTS:
                values = {"failed_at": now, "next_attempt_at": None, "last_error": outcome.error}
                failed += 1
                log.warning("webhook delivery given up", delivery_id=item.id, error=outcome.error)
            else:
                values = {"next_attempt_at": now + retry_delay(item.attempt), "last_error": outcome.error}
                retrying += 1
            # Only while the claim is still ours: had the lease run out and another replica taken
            # the delivery, its attempt count moved on and its outcome is the one to keep.
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == item.id, WebhookDelivery.attempts == item.attempt)
                .values(**values)
            )
    return DeliveryStats(attempted=len(outcomes), delivered=delivered, retrying=retrying, failed=failed)


def retry_delay(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 30 s doubling, capped at 1 h, ±10 %."""
    base: timedelta = min(FIRST_RETRY * (2 ** (attempts - 1)), MAX_RETRY)
    factor: float = _random.uniform(1 - JITTER, 1 + JITTER)
    return base * factor


def _clip(text: str) -> str:
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 1] + "…"


# --- signatures -------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Fleetkeeper-Signature value: HMAC-SHA256 of "<timestamp>.<body>" under the secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_signature(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """For receivers: whether `header` is our signature of this timestamp and body. Receivers should
    also refuse timestamps far from their clock, against replays."""
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), header.encode())

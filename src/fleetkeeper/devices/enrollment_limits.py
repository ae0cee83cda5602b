"""Bounds on the enrollment queue, which anyone who reaches the device listener can write to: how
fast requests come from one address and one network, how many devices wait at once, and how long
an undecided request is kept.

A device that proves nothing but its own new key lands in the queue with the identity it claims.
These bounds keep a flood of such requests from burying real devices or filling the database; a
device an operator vouched for (a batch token, a pre-authorization) is never held back by the
queue's size, and a device already waiting keeps polling.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.audit.service import SYSTEM, record
from fleetkeeper.core.config import Settings
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.logging import get_logger
from fleetkeeper.core.networks import network_of
from fleetkeeper.devices.context import DevicesContext
from fleetkeeper.devices.models import Device

# A full queue empties only as operators decide or requests expire: not within seconds.
QUEUE_FULL_RETRY_AFTER_SECONDS = 600
# Expired requests are removed this many per transaction, so that the audit log's head row is
# never held for long.
EXPIRY_BATCH = 500

log = get_logger(__name__)


class EnrollmentQueueFullError(ProblemError):
    status = 503
    code = "enrollment_queue_full"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the enrollment queue is full ({limit} devices wait for an operator's decision): ask an "
            "operator to accept or reject waiting devices, or enroll with a batch enrollment token or "
            "a pre-authorization; try again later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_SECONDS)},
            retry_after=QUEUE_FULL_RETRY_AFTER_SECONDS,
        )


async def count_request(runtime: DevicesContext, address: str | None) -> None:
    """Counts one enrollment request (a poll too) against its address's and its network's limits;
    raises RateLimitedError past either."""
    settings = runtime.settings
    await runtime.rate_limiter.hit(
        settings.enrollment_limit_per_address, "enroll", str(address), detail="too many enrollments"
    )
    await runtime.rate_limiter.hit(
        settings.enrollment_limit_per_network,
        "enroll-network",
        network_of(address, settings),
        detail="too many enrollments from this network",
    )


async def ensure_queue_has_room(session: AsyncSession, settings: Settings, address: str | None) -> None:
    """Refuses a device that would join a queue already holding `enrollment_queue_limit` devices.
    Concurrent requests may each see the last free place: the limit holds up to them."""
    limit = settings.enrollment_queue_limit
    waiting = select(Device.id).where(Device.status == "pending").limit(limit).subquery()
    count = int(await session.scalar(select(func.count()).select_from(waiting)) or 0)
    if count < limit:
        return
    log.warning(
        "enrollment refused: the queue is full",
        code="enrollment_queue_full",
        address=address,
        network=network_of(address, settings),
        limit=limit,
    )
    raise EnrollmentQueueFullError(limit)


@dataclass(frozen=True)
class ExpiryResult:
    expired: int
    before: datetime


async def expire_stale_requests(runtime: DevicesContext, *, now: datetime | None = None) -> ExpiryResult:
    """Removes the devices that have waited for a decision longer than `enrollment_pending_days`,
    each with an audit record. A device that is still there and polling asks again, and joins the
    queue anew; a device accepted or rejected meanwhile is never touched."""
    before = (now or utcnow()) - timedelta(days=runtime.settings.enrollment_pending_days)
    expired = 0
    while True:
        async with runtime.database.transaction() as session:
            removed = await _expire_batch(session, before)
        expired += removed
        if removed < EXPIRY_BATCH:
            break
    if expired:
        log.info("stale enrollment requests expired", expired=expired, requested_before=before.isoformat())
    return ExpiryResult(expired, before)


async def _expire_batch(session: AsyncSession, before: datetime) -> int:
    stale = (
        select(Device.id)
        .where(Device.status == "pending", Device.created_at < before)
        .order_by(Device.created_at)
        .limit(EXPIRY_BATCH)
    )
    ids = list((await session.scalars(stale)).all())
    if not ids:
        return 0
    # Checked again in the delete itself: an operator may have decided since.
    removed = await session.execute(
        delete(Device)
        .where(Device.id.in_(ids), Device.status == "pending", Device.created_at < before)
        .returning(Device.id, Device.key_fingerprint, Device.identity, Device.created_at)
        .execution_options(synchronize_session=False)
    )
    rows = removed.all()
    for device_id, fingerprint, identity, requested_at in rows:
        await record(
            session,
            actor=SYSTEM,
            action="device.enrollment_expired",
            object_type="device",
            object_id=device_id,
            details={
                "identity": identity,
                "key_fingerprint": fingerprint,
                "requested_at": requested_at.isoformat(),
            },
        )
    return len(rows)

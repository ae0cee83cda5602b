"""Domain logic of the audit domain: append a record, search records.

Verification, retention and export live in their own modules; `fleetkeeper.audit` exports all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.audit.chain import GENESIS_HASH, encode_details, format_time, record_hash
from fleetkeeper.audit.models import AuditHead, AuditRecord
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.paging import Page, decode_cursor, encode_cursor, invalid_cursor

ActorKind = Literal["user", "device", "system", "anonymous"]
Outcome = Literal["success", "failure", "denied"]
ACTOR_KINDS: tuple[str, ...] = get_args(ActorKind)
OUTCOMES: tuple[str, ...] = get_args(Outcome)
MAX_PAGE_SIZE = 500

_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_ACTION_PREFIX = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.\*")
_OBJECT_TYPE = re.compile(r"[a-z][a-z0-9_]*")
_NAME_LIMIT = 64
_CURSOR_PREFIX = "a1."


@dataclass(frozen=True)
class Actor:
    """Who did it: a user, a device, the server itself, or someone not (yet) identified."""

    kind: ActorKind
    id: str | None = None
    name: str | None = None
    address: str | None = None  # client IP


SYSTEM = Actor(kind="system", name="fleetkeeper")


async def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str | None,
    outcome: Outcome = "success",
    details: Mapping[str, Any] | None = None,
) -> AuditRecord:
    """Append a record inside the caller's transaction: it commits or rolls back with the change.

    Call it in `database.transaction()`: appenders queue on the head row until the caller's
    transaction ends. Secret-looking keys in `details` are redacted; invalid input raises ValueError.
    """
    _check_name("action", action, _ACTION)
    _check_name("object_type", object_type, _OBJECT_TYPE)
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    if actor.kind not in ACTOR_KINDS:
        raise ValueError(f"actor kind must be one of {', '.join(ACTOR_KINDS)}")
    details_text = encode_details(details)

    head_seq, head_hash = await lock_head(session)
    # Taken after the lock, so that times follow the chain's order (within one clock).
    occurred_at = utcnow()
    entry = AuditRecord(
        seq=head_seq + 1,
        id=new_id("aud"),
        occurred_at=occurred_at,
        actor_kind=actor.kind,
        # Names and ids can come from the client (a failed sign-in's username): clipped, not refused,
        # so that recording an attack never fails because of the attacker's input.
        actor_id=_clip(actor.id, 64),
        actor_name=_clip(actor.name, 255),
        actor_address=_clip(actor.address, 64),
        action=action,
        object_type=object_type,
        object_id=_clip(object_id, 255),
        outcome=outcome,
        details=details_text,
        prev_hash=head_hash,
    )
    entry.hash = record_hash(
        seq=entry.seq,
        id=entry.id,
        occurred_at=format_time(occurred_at),
        actor_kind=entry.actor_kind,
        actor_id=entry.actor_id,
        actor_name=entry.actor_name,
        actor_address=entry.actor_address,
        action=entry.action,
        object_type=entry.object_type,
        object_id=entry.object_id,
        outcome=entry.outcome,
        details=entry.details,
        prev_hash=entry.prev_hash,
    )
    session.add(entry)
    await session.flush()
    await session.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=entry.seq, hash=entry.hash))
    return entry


async def lock_head(session: AsyncSession) -> tuple[int, str]:
    """The newest seq and hash, with the head row locked until the transaction ends (PostgreSQL;
    SQLite's write transaction already excludes other writers)."""
    query = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
    row = (await session.execute(query)).one_or_none()
    if row is None:
        # The migration creates the row; it is only missing after someone emptied the table.
        # Recreated at genesis: if records remain, the next append collides with seq 1 and fails.
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await session.execute(
            insert(AuditHead).values(id=1, seq=0, hash=GENESIS_HASH).on_conflict_do_nothing()
        )
        row = (await session.execute(query)).one()
    return row.seq, row.hash


def _check_name(field: str, value: str, pattern: re.Pattern[str]) -> None:
    if len(value) > _NAME_LIMIT or not pattern.fullmatch(value):
        raise ValueError(f"{field} {value!r} is not a dotted lowercase name such as 'user.created'")


def _clip(value: str | None, limit: int) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


# --- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    """All given filters must match. `actor` matches the actor's id or name; `action` is exact, or a
    prefix when it ends with ".*" ("user.*"); `since` is inclusive and `until` exclusive."""

    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def search(
    session: AsyncSession, filters: AuditFilter, *, limit: int = 100, cursor: str | None = None
) -> Page[AuditRecord]:
    """Records matching `filters`, newest first; pass `next_cursor` back for the next page."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ProblemError(f"limit must be between 1 and {MAX_PAGE_SIZE}", code="invalid_limit")
    query = select(AuditRecord).where(*filter_conditions(filters))
    if cursor is not None:
        query = query.where(AuditRecord.seq < _decode_cursor(cursor))
    query = query.order_by(AuditRecord.seq.desc()).limit(limit + 1)
    rows = list((await session.scalars(query)).all())
    more = len(rows) > limit
    items = rows[:limit]
    return Page(items=items, next_cursor=_encode_cursor(items[-1].seq) if more else None)


def filter_conditions(filters: AuditFilter) -> list[ColumnElement[bool]]:
    """SQL conditions for `filters`; a malformed filter raises ProblemError(code="invalid_filter")."""
    conditions: list[ColumnElement[bool]] = []
    if filters.actor is not None:
        conditions.append(or_(AuditRecord.actor_id == filters.actor, AuditRecord.actor_name == filters.actor))
    if filters.action is not None:
        prefix = filters.action.endswith(".*")
        if not (_ACTION_PREFIX if prefix else _ACTION).fullmatch(filters.action):
            raise ProblemError(f"action filter {filters.action!r} is malformed", code="invalid_filter")
        if prefix:
            # autoescape: "_" is a LIKE wildcard and is allowed in action names.
            conditions.append(AuditRecord.action.startswith(filters.action[:-1], autoescape=True))
        else:
            conditions.append(AuditRecord.action == filters.action)
    if filters.object_type is not None:
        conditions.append(AuditRecord.object_type == filters.object_type)
    if filters.object_id is not None:
        conditions.append(AuditRecord.object_id == filters.object_id)
    if filters.outcome is not None:
        if filters.outcome not in OUTCOMES:
            raise ProblemError(f"outcome must be one of {', '.join(OUTCOMES)}", code="invalid_filter")
        conditions.append(AuditRecord.outcome == filters.outcome)
    for name, value in (("since", filters.since), ("until", filters.until)):
        if value is not None and value.tzinfo is None:
            raise ProblemError(f"{name} needs a timezone", code="invalid_filter")
    if filters.since is not None:
        conditions.append(AuditRecord.occurred_at >= filters.since)
    if filters.until is not None:
        conditions.append(AuditRecord.occurred_at < filters.until)
    return conditions


def _encode_cursor(seq: int) -> str:
    return encode_cursor({"before": seq}, prefix=_CURSOR_PREFIX)


def _decode_cursor(cursor: str) -> int:
    value = decode_cursor(cursor, prefix=_CURSOR_PREFIX, max_length=100)
    before = value.get("before") if isinstance(value, dict) else None
    if type(before) is not int or not 1 <= before < 2**63:
        raise invalid_cursor()
    return before


# What the dashboard lists as security events: what devices reported refusing (bad signatures,
# expired metadata, older releases), refused enrollments and uploads, and certificates revoked by a
# decommission.
SECURITY_ACTIONS = (
    "device.security_event",
    "device.enrollment_refused",
    "device.decommissioned",
    "release.upload_refused",
)


async def recent_security_events(session: AsyncSession, *, limit: int = 10) -> Sequence[AuditRecord]:
    """The newest records of SECURITY_ACTIONS, newest first."""
    query = (
        select(AuditRecord)
        .where(AuditRecord.action.in_(SECURITY_ACTIONS))
        .order_by(AuditRecord.seq.desc())
        .limit(limit)
    )
    return (await session.scalars(query)).all()

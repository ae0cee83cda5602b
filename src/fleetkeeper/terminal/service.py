"""Terminal sessions and file transfers on record: who may open one, the row that tracks it, and
the audit records of its life (opened, refused, closed; files uploaded and downloaded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.audit.service import Actor, Outcome, record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ConflictError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.lookups import get_or_404
from fleetkeeper.devices.service import get_permitted_device
from fleetkeeper.terminal.context import TerminalContext
from fleetkeeper.terminal.models import TerminalSession

MAX_PATH_LENGTH = 4096
MAX_PAGE_SIZE = 200


def recording_key(session_id: str) -> str:
    return f"terminal/recordings/{session_id}.cast"


def check_device_path(path: str) -> str:
    """An absolute path on the device; the agent opens it beneath one of its roots, refusing `..` and
    symbolic links there."""
    if not path.startswith("/") or "\x00" in path or len(path) > MAX_PATH_LENGTH:
        raise ProblemError(
            f"path must be absolute, without NUL, at most {MAX_PATH_LENGTH} characters", code="invalid_path"
        )
    return path


async def begin(
    runtime: TerminalContext, principal: Principal, device_id: str, kind: str, *, path: str | None = None
) -> TerminalSession:
    """Checks `devices:connect` within the device's groups and the device's session limit, and
    starts the row. A refusal is audited (denied) and raised."""
    settings = runtime.settings
    action = "terminal.session_refused" if kind == "terminal" else f"terminal.file_{kind}_refused"
    try:
        async with runtime.database.transaction() as session:
            device = await get_permitted_device(session, principal, device_id, Permission.DEVICES_CONNECT)
            if device.status != "accepted":
                raise ConflictError(f"the device is {device.status}", code="device_not_accepted")
            if kind == "terminal":
                since = utcnow() - timedelta(seconds=settings.terminal_max_session_seconds)
                open_now = await session.scalar(
                    select(func.count())
                    .select_from(TerminalSession)
                    .where(
                        TerminalSession.device_id == device.id,
                        TerminalSession.kind == "terminal",
                        TerminalSession.closed_at.is_(None),
                        TerminalSession.opened_at > since,
                    )
                )
                if (open_now or 0) >= settings.terminal_max_sessions_per_device:
                    raise ConflictError(
                        f"the device has {open_now} terminal sessions open, the most allowed",
                        code="too_many_sessions",
                    )
            row = TerminalSession(
                id=new_id("term"),
                device_id=device.id,
                user_id=principal.user_id,
                username=principal.username,
                address=principal.address,
                kind=kind,
                path=path,
                opened_at=utcnow(),
                bytes_in=0,
                bytes_out=0,
            )
            session.add(row)
            return row
    except ProblemError as exc:
        outcome: Outcome = "denied" if exc.status in (403, 404) else "failure"
        await audit(
            runtime.database,
            principal.actor,
            action,
            device_id,
            outcome,
            {"refusal": exc.code, "reason": exc.detail, **({"path": path} if path else {})},
        )
        raise


async def audit(
    database: Database,
    actor: Actor,
    action: str,
    device_id: str,
    outcome: Outcome,
    details: dict[str, Any],
) -> None:
    async with database.transaction() as session:
        await record(
            session,
            actor=actor,
            action=action,
            object_type="device",
            object_id=device_id,
            outcome=outcome,
            details=details,
        )


async def refused(
    runtime: TerminalContext, row: TerminalSession, actor: Actor, code: str, message: str
) -> None:
    """The device (or its absence) refused: the row closes with the code, and it is audited."""
    async with runtime.database.transaction() as session:
        stored = await session.get(TerminalSession, row.id)
        if stored is not None:
            stored.closed_at = utcnow()
            stored.close_reason = code[:64]
        action = "terminal.session_refused" if row.kind == "terminal" else f"terminal.file_{row.kind}_refused"
        details: dict[str, Any] = {"session": row.id, "refusal": code, "reason": message[:500]}
        if row.path:
            details["path"] = row.path
        await record(
            session,
            actor=actor,
            action=action,
            object_type="device",
            object_id=row.device_id,
            outcome="failure",
            details=details,
        )


async def opened(runtime: TerminalContext, row: TerminalSession, actor: Actor, cols: int, rows: int) -> None:
    await audit(
        runtime.database,
        actor,
        "terminal.session_opened",
        row.device_id,
        "success",
        {"session": row.id, "cols": cols, "rows": rows},
    )


@dataclass
class Ending:
    reason: str
    exit_status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    recording_key: str | None = None
    size: int | None = None
    sha256: str | None = None
    failed: bool = False


async def finish(runtime: TerminalContext, row: TerminalSession, actor: Actor, ending: Ending) -> None:
    """Closes the row and audits the end: how long, how much, why."""
    now = utcnow()
    async with runtime.database.transaction() as session:
        stored = await session.get(TerminalSession, row.id)
        if stored is not None:
            stored.closed_at = now
            stored.close_reason = ending.reason[:64]
            stored.exit_status = ending.exit_status
            stored.bytes_in = ending.bytes_in
            stored.bytes_out = ending.bytes_out
            stored.recording_key = ending.recording_key
        details: dict[str, Any] = {
            "session": row.id,
            "reason": ending.reason,
            "duration_seconds": round((now - row.opened_at).total_seconds(), 3),
            "bytes_in": ending.bytes_in,
            "bytes_out": ending.bytes_out,
        }
        if row.kind == "terminal":
            action = "terminal.session_closed"
            details["exit_status"] = ending.exit_status
            details["recording"] = ending.recording_key
        else:
            action = "terminal.file_uploaded" if row.kind == "upload" else "terminal.file_downloaded"
            details.update(path=row.path, size=ending.size, sha256=ending.sha256)
        await record(
            session,
            actor=actor,
            action=action,
            object_type="device",
            object_id=row.device_id,
            outcome="failure" if ending.failed else "success",
            details=details,
        )


async def list_sessions(
    database: Database,
    *,
    device_id: str | None = None,
    user_id: str | None = None,
    before: datetime | None = None,
    limit: int = 50,
) -> Sequence[TerminalSession]:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ProblemError(f"limit must be between 1 and {MAX_PAGE_SIZE}", code="invalid_limit")
    query = select(TerminalSession)
    if device_id:
        query = query.where(TerminalSession.device_id == device_id)
    if user_id:
        query = query.where(TerminalSession.user_id == user_id)
    if before:
        query = query.where(TerminalSession.opened_at < before)
    query = query.order_by(TerminalSession.opened_at.desc(), TerminalSession.id.desc()).limit(limit)
    async with database.session() as session:
        return (await session.scalars(query)).all()


async def get_session(database: Database, session_id: str) -> TerminalSession:
    not_found = NotFoundError("no such terminal session", code="session_not_found")
    async with database.session() as session:
        return await get_or_404(session, TerminalSession, session_id, not_found)

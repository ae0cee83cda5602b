"""Verification: recompute the chain and name the first record that does not fit."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fleetkeeper.audit.chain import GENESIS_HASH, record_hash
from fleetkeeper.audit.checkpoints import checkpoint_key_path, load_checkpoint_public_key, signature_valid
from fleetkeeper.audit.models import AuditCheckpoint, AuditHead, AuditRecord
from fleetkeeper.audit.service import Actor, AuditFilter, record, search
from fleetkeeper.core.db import Database

ALTERED = "hash mismatch (record altered)"
GAP = "sequence gap (record deleted)"
LINK = "previous hash mismatch (records reordered or deleted)"
HEAD_BEHIND = "head mismatch (newest records deleted)"
HEAD_AHEAD = "head mismatch (record added without moving the head: forged)"
HEAD_REPLACED = "head mismatch (newest record replaced)"
HEAD_MISSING = "head missing (audit_head row deleted)"
UNEXPECTED = "unexpected record before the start of the chain (forged)"
CHECKPOINT_SIGNATURE = "checkpoint signature invalid (checkpoint altered or signed by another key)"
CHECKPOINT_NO_KEY = "checkpoint not verifiable: no checkpoint public key given"
CHECKPOINT_ANCHOR = "checkpoint mismatch (first kept record does not follow the checkpoint's anchor)"
CHECKPOINT_STALE = "checkpoint mismatch (records the checkpoint says were deleted are present)"

BATCH_SIZE = 5000


# Batches are read straight from the driver, as plain tuples: SQLAlchemy's result layer costs as much
# per row as hashing it. The columns are the hashed fields in record_hash's order, then the stored
# hash; the database formats the time as the hashed text (parsing it into a datetime and back would
# cost as much again). Keyset batches of 5,000, because a server-side cursor, larger batches and the
# database building the hashed text itself each make the walk slower (docs/benchmarks.md).
_BATCH_QUERY = (
    "SELECT seq, id, {time}, actor_kind, actor_id, actor_name, actor_address, action, object_type, "
    "object_id, outcome, details, prev_hash, hash FROM audit_records WHERE seq > {after} ORDER BY seq "
    "LIMIT {limit}"
)
# SQLAlchemy stores SQLite times as "YYYY-MM-DD HH:MM:SS.ffffff", in UTC (core.db.UTCDateTime).
_SQLITE_BATCH = _BATCH_QUERY.format(time="replace(occurred_at, ' ', 'T') || 'Z'", after="?", limit="?")
_POSTGRES_BATCH = _BATCH_QUERY.format(
    time="""to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    after="$1",
    limit="$2",
)
_BEFORE_ANY_SEQ = -(2**63)  # forged records with seq 0 or below are read too

BatchReader = Callable[[int], Awaitable[Sequence[Sequence[Any]]]]


async def _batch_reader(connection: AsyncConnection, size: int) -> BatchReader:
    """Reads the records after a seq, inside the connection's transaction (already begun)."""
    driver: Any = (await connection.get_raw_connection()).driver_connection
    if connection.dialect.name == "postgresql":

        async def postgres(after: int) -> Sequence[Sequence[Any]]:
            rows: Sequence[Sequence[Any]] = await driver.fetch(_POSTGRES_BATCH, after, size)
            return rows

        return postgres

    async def sqlite(after: int) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await driver.execute_fetchall(_SQLITE_BATCH, (after, size))
        return rows

    return sqlite


async def _batches(connection: AsyncConnection, size: int) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
    """Every record in seq order, batch after batch. The next batch's query is sent before the
    caller gets the current one, so that the database reads and sends it while the caller hashes."""
    read = await _batch_reader(connection, size)
    pending: asyncio.Future[Sequence[Sequence[Any]]] | None = asyncio.ensure_future(read(_BEFORE_ANY_SEQ))
    try:
        while pending is not None:
            rows = await pending
            pending = None
            if len(rows) == size:
                pending = asyncio.ensure_future(read(rows[-1][0]))
                await asyncio.sleep(0)  # lets it send the query
            yield rows
    finally:
        # A caller that stops early (a broken record) gets the connection back idle.
        if pending is not None:
            with suppress(Exception):
                await pending


@asynccontextmanager
async def _snapshot(database: Database) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that sees one state of the whole log."""
    async with database.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # One snapshot for every batch: appends that commit meanwhile are not half-seen.
            connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with connection.begin():
            yield connection


_collector_pauses = 0


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The walk makes about 15 tracked objects per record and no reference cycles; the cyclic
    collector's passes over them cost a quarter of the walk's CPU time (docs/benchmarks.md). Paused
    for the walk, counted so that overlapping walks (API requests in one event loop) restore it once."""
    global _collector_pauses
    if _collector_pauses == 0 and not gc.isenabled():
        yield  # someone else turned it off: not ours to turn back on
        return
    _collector_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        _collector_pauses -= 1
        if _collector_pauses == 0:
            gc.enable()


async def read_chain(
    database: Database, *, batch_size: int = BATCH_SIZE
) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """The records as verification reads them — batches of plain rows, the hashed fields and the
    stored hash — without checking them: bench/audit_verify.py times it as the floor of `verify`.
    Read it to the end or close it (`contextlib.aclosing`): the garbage collector is paused meanwhile."""
    async with _snapshot(database) as connection:
        await connection.exec_driver_sql("SELECT 1")  # begins the snapshot, as verify's first read does
        with _collector_paused():
            async with aclosing(_batches(connection, batch_size)) as batches:
                async for rows in batches:
                    yield rows


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str | None
    checkpoint_id: str | None = None
    # When not ok: the first record that does not fit (its id is None when the record is missing).
    bad_seq: int | None = None
    bad_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class LastVerification:
    """A verification someone ran, as its audit record tells it."""

    seq: int
    occurred_at: datetime
    actor_name: str | None
    ok: bool
    checked: int
    bad_seq: int | None
    reason: str | None


class _BrokenError(Exception):
    def __init__(self, seq: int | None, id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.id, self.reason = seq, id, reason


async def verify(
    database: Database, *, checkpoint_key: Ed25519PublicKey | None = None, batch_size: int = BATCH_SIZE
) -> VerifyResult:
    """Walk the whole chain in one consistent snapshot, in keyset batches of plain tuples."""
    async with _snapshot(database) as connection:
        with _collector_paused():
            return await _Walk(connection, checkpoint_key, batch_size).run()


async def verify_on_record(database: Database, data_dir: Path, actor: Actor) -> VerifyResult:
    """Verifies the whole chain with the server's checkpoint key and puts the result on record, so
    that everyone with the log sees when it was last checked and what was found."""
    key = await asyncio.to_thread(load_checkpoint_public_key, checkpoint_key_path(data_dir))
    result = await verify(database, checkpoint_key=key)
    details = {name: value for name, value in asdict(result).items() if name != "head_hash"}
    async with database.transaction() as session:
        await record(
            session,
            actor=actor,
            action="audit.verified",
            object_type="audit_log",
            object_id=None,
            outcome="success" if result.ok else "failure",
            details=details,
        )
    return result


async def last_verification(session: AsyncSession) -> LastVerification | None:
    page = await search(session, AuditFilter(action="audit.verified"), limit=1)
    if not page.items:
        return None
    row = page.items[0]
    details = row.details_object()
    return LastVerification(
        seq=row.seq,
        occurred_at=row.occurred_at,
        actor_name=row.actor_name,
        ok=bool(details.get("ok")),
        checked=int(details.get("checked") or 0),
        bad_seq=details.get("bad_seq"),
        reason=details.get("reason"),
    )


async def latest_checkpoint(session: AsyncSession) -> AuditCheckpoint | None:
    """The newest retention checkpoint: where the kept part of the chain starts."""
    return await session.scalar(
        select(AuditCheckpoint).order_by(AuditCheckpoint.first_kept_seq.desc()).limit(1)
    )


class _Walk:
    def __init__(self, connection: AsyncConnection, key: Ed25519PublicKey | None, batch_size: int) -> None:
        self.connection = connection
        self.key = key
        self.batch_size = batch_size
        self.checked = 0
        self.first_seq: int | None = None
        self.head: tuple[int, str] | None = None
        self.checkpoint: AuditCheckpoint | None = None
        self.last_hash = GENESIS_HASH

    async def run(self) -> VerifyResult:
        # Read through SQLAlchemy first: that begins the transaction (the snapshot) which the batch
        # reads on the driver connection then share.
        head_row = (
            await self.connection.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))
        ).one_or_none()
        self.head = (head_row.seq, head_row.hash) if head_row else None
        try:
            expected_seq, prev_hash = await self._start()
            last_seq = await self._records(expected_seq, prev_hash)
            await self._check_head(last_seq)
        except _BrokenError as broken:
            return self._result(None, ok=False, broken=broken)
        return self._result(last_seq, ok=True)

    async def _start(self) -> tuple[int, str]:
        """Where the chain must begin: seq 1 at genesis, or where the newest checkpoint says."""
        query = select(AuditCheckpoint.__table__).order_by(AuditCheckpoint.first_kept_seq.desc()).limit(1)
        row = (await self.connection.execute(query)).one_or_none()
        if row is None:
            return 1, GENESIS_HASH
        checkpoint = AuditCheckpoint(**row._asdict())
        self.checkpoint = checkpoint
        problem = None
        if self.key is None:
            problem = CHECKPOINT_NO_KEY
        elif not signature_valid(checkpoint, self.key):
            problem = CHECKPOINT_SIGNATURE
        if problem:
            seq = checkpoint.first_kept_seq
            raise _BrokenError(seq, await self._id_of(seq), problem)
        return checkpoint.first_kept_seq, checkpoint.anchor_hash

    async def _records(self, expected_seq: int, prev_hash: str) -> int:
        """Checks every record; returns the last seq (expected_seq - 1 when there is none)."""
        checked = 0
        try:
            async with aclosing(_batches(self.connection, self.batch_size)) as batches:
                async for rows in batches:
                    # The lean inner loop: a million records must verify in a few seconds.
                    for row in rows:
                        seq = row[0]
                        if seq != expected_seq:
                            raise _BrokenError(seq, row[1], self._sequence_problem(seq, expected_seq))
                        try:
                            computed = record_hash(*row[:13])
                        except (TypeError, ValueError):
                            # A value of the wrong type, which SQLite's loose columns let a forger store.
                            computed = None
                        if computed != row[13]:
                            raise _BrokenError(seq, row[1], ALTERED)
                        if row[12] != prev_hash:
                            first_after_checkpoint = checked == 0 and self.checkpoint is not None
                            raise _BrokenError(
                                seq, row[1], CHECKPOINT_ANCHOR if first_after_checkpoint else LINK
                            )
                        if checked == 0:
                            self.first_seq = seq
                        prev_hash = row[13]
                        expected_seq += 1
                        checked += 1
        finally:
            self.checked = checked
        self.last_hash = prev_hash
        return expected_seq - 1

    def _sequence_problem(self, seq: int, expected_seq: int) -> str:
        if seq > expected_seq:
            return GAP
        return CHECKPOINT_STALE if self.checkpoint is not None else UNEXPECTED

    async def _check_head(self, last_seq: int) -> None:
        if self.head is None:
            if self.checked or self.checkpoint is not None:
                raise _BrokenError(last_seq, None, HEAD_MISSING)
            return
        head_seq, head_hash = self.head
        if head_seq > last_seq:
            raise _BrokenError(last_seq + 1, None, HEAD_BEHIND)
        if head_seq < last_seq:
            beyond = head_seq + 1
            raise _BrokenError(beyond, await self._id_of(beyond), HEAD_AHEAD)
        if head_hash != self.last_hash:
            raise _BrokenError(last_seq, await self._id_of(last_seq), HEAD_REPLACED)

    async def _id_of(self, seq: int) -> str | None:
        return await self.connection.scalar(select(AuditRecord.id).where(AuditRecord.seq == seq))

    def _result(self, last_seq: int | None, *, ok: bool, broken: _BrokenError | None = None) -> VerifyResult:
        return VerifyResult(
            ok=ok,
            checked=self.checked,
            first_seq=self.first_seq,
            last_seq=last_seq if self.checked else None,
            head_hash=self.head[1] if self.head else None,
            checkpoint_id=self.checkpoint.id if self.checkpoint else None,
            bad_seq=broken.seq if broken else None,
            bad_id=broken.id if broken else None,
            reason=broken.reason if broken else None,
        )

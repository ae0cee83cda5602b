"""Retention: delete the oldest records and leave a signed checkpoint so that the rest verifies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select

from fleetkeeper.audit.checkpoints import key_id, sign
from fleetkeeper.audit.models import AuditCheckpoint, AuditRecord
from fleetkeeper.audit.service import SYSTEM, Actor, lock_head, record
from fleetkeeper.audit.verification import VerifyResult, verify
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.ids import new_id


@dataclass(frozen=True)
class PruneResult:
    deleted: int
    first_kept_seq: int | None
    checkpoint_id: str | None


class AuditChainBrokenError(Exception):
    """Pruning refused: it would delete the evidence of a broken chain."""

    def __init__(self, result: VerifyResult) -> None:
        super().__init__(f"the audit chain is broken at record seq {result.bad_seq}: {result.reason}")
        self.result = result


async def prune(
    database: Database, *, before: datetime, signer: Ed25519PrivateKey, actor: Actor = SYSTEM
) -> PruneResult:
    """Delete the records that occurred before `before`, oldest first and without holes.

    The chain is verified first: pruning never erases the evidence of tampering. Deletion stops at
    the first record at or after the cutoff, so that a record is never deleted out of order even
    when clocks of several replicas disagree. The deletion and its checkpoint are recorded as
    "audit.pruned" in the same transaction.
    """
    if before.tzinfo is None:
        raise ValueError("the cutoff needs a timezone")
    if before > utcnow():
        raise ValueError("the cutoff is in the future")
    checked = await verify(database, checkpoint_key=signer.public_key())
    if not checked.ok:
        raise AuditChainBrokenError(checked)

    async with database.transaction() as session:
        head_seq, _ = await lock_head(session)
        kept_from = await session.scalar(
            select(func.min(AuditRecord.seq)).where(AuditRecord.occurred_at >= before)
        )
        first_kept = kept_from if kept_from is not None else head_seq + 1
        deleted = await session.scalar(select(func.count()).where(AuditRecord.seq < first_kept)) or 0
        details: dict[str, object] = {"cutoff": before, "deleted": deleted}
        checkpoint = None
        if deleted:
            anchor = await session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == first_kept - 1))
            assert anchor is not None, "verified chain has no holes"
            await session.execute(
                delete(AuditRecord)
                .where(AuditRecord.seq < first_kept)
                .execution_options(synchronize_session=False)
            )
            checkpoint = AuditCheckpoint(
                id=new_id("acp"),
                created_at=utcnow(),
                cutoff=before.astimezone(UTC),
                first_kept_seq=first_kept,
                anchor_hash=anchor,
                deleted_count=deleted,
                key_id=key_id(signer.public_key()),
            )
            checkpoint.signature = sign(checkpoint, signer)
            session.add(checkpoint)
            details |= {"first_kept_seq": first_kept, "checkpoint_id": checkpoint.id}
        await record(
            session,
            actor=actor,
            action="audit.pruned",
            object_type="audit_log",
            object_id=None,
            details=details,
        )
    return PruneResult(
        deleted=deleted,
        first_kept_seq=first_kept if deleted else None,
        checkpoint_id=checkpoint.id if checkpoint else None,
    )

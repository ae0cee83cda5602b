"""The audit domain: an append-only, hash-chained log of who did what, verifiable and exportable.

Other domains call `record()` inside their own transaction (see `fleetkeeper.audit.service`).
"""

from __future__ import annotations

from fleetkeeper.audit.checkpoints import (
    checkpoint_key_path,
    load_checkpoint_public_key,
    load_or_create_checkpoint_key,
)
from fleetkeeper.audit.export import export_csv, export_jsonl
from fleetkeeper.audit.models import AuditCheckpoint, AuditRecord
from fleetkeeper.audit.retention import AuditChainBrokenError, PruneResult, prune
from fleetkeeper.audit.service import SYSTEM, Actor, AuditFilter, record, search
from fleetkeeper.audit.verification import VerifyResult, verify
from fleetkeeper.core.paging import Page

__all__ = [
    "SYSTEM",
    "Actor",
    "AuditChainBrokenError",
    "AuditCheckpoint",
    "AuditFilter",
    "AuditRecord",
    "Page",
    "PruneResult",
    "VerifyResult",
    "checkpoint_key_path",
    "export_csv",
    "export_jsonl",
    "load_checkpoint_public_key",
    "load_or_create_checkpoint_key",
    "prune",
    "record",
    "search",
    "verify",
]

"""Retention: pruning leaves a signed checkpoint; the rest verifies, and tampering is still caught."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper.audit import (
    AuditChainBrokenError,
    checkpoint_key_path,
    load_checkpoint_public_key,
    load_or_create_checkpoint_key,
    prune,
    verification,
    verify,
)
from fleetkeeper.core.db import Database
from tests.audit.helpers import append, documented_hash, execute, rows
from tests.conftest import run_fleetkeeper_async

KEY = Ed25519PrivateKey.generate()


@pytest.fixture
async def pruned(database: Database) -> list[str]:
    """Five old records pruned, three kept, then the "audit.pruned" record: seq 6..9 remain."""
    await append(database, 5)
    cutoff = datetime.now(UTC)
    kept = await append(database, 3)
    result = await prune(database, before=cutoff, signer=KEY)
    assert (result.deleted, result.first_kept_seq) == (5, 6)
    assert result.checkpoint_id is not None
    return kept


async def test_pruning_keeps_a_verifiable_chain(database: Database, pruned: list[str]) -> None:
    stored = await rows(database)
    assert [row["seq"] for row in stored] == [6, 7, 8, 9]
    assert [row["id"] for row in stored[:3]] == pruned
    note = stored[-1]
    assert (note["action"], note["actor_kind"], note["object_type"]) == (
        "audit.pruned",
        "system",
        "audit_log",
    )
    result = await verify(database, checkpoint_key=KEY.public_key())
    assert result.ok, result
    assert (result.checked, result.first_seq, result.last_seq) == (4, 6, 9)
    assert result.checkpoint_id is not None


async def test_a_checkpoint_needs_its_key(database: Database, pruned: list[str]) -> None:
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (
        False,
        6,
        pruned[0],
        verification.CHECKPOINT_NO_KEY,
    )
    other = Ed25519PrivateKey.generate().public_key()
    assert (await verify(database, checkpoint_key=other)).reason == verification.CHECKPOINT_SIGNATURE


@pytest.mark.parametrize(
    "change",
    [
        "anchor_hash = '" + "a" * 64 + "'",
        "first_kept_seq = 7",
        "deleted_count = 1",
        "signature = '" + "0" * 128 + "'",
        "signature = 'not hex'",
    ],
)
async def test_a_tampered_checkpoint_is_caught(database: Database, pruned: list[str], change: str) -> None:
    await execute(database, f"UPDATE audit_checkpoints SET {change}")  # noqa: S608
    result = await verify(database, checkpoint_key=KEY.public_key())
    assert (result.ok, result.reason) == (False, verification.CHECKPOINT_SIGNATURE)


@pytest.mark.parametrize(("deleted", "named"), [(6, 7), (7, 8)])
async def test_a_record_deleted_after_the_checkpoint_is_caught(
    database: Database, pruned: list[str], deleted: int, named: int
) -> None:
    await execute(database, "DELETE FROM audit_records WHERE seq = :seq", seq=deleted)
    result = await verify(database, checkpoint_key=KEY.public_key())
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (
        False,
        named,
        pruned[named - 6],
        verification.GAP,
    )


async def test_a_deleted_checkpoint_is_caught(database: Database, pruned: list[str]) -> None:
    await execute(database, "DELETE FROM audit_checkpoints")
    result = await verify(database, checkpoint_key=KEY.public_key())
    assert (result.ok, result.bad_seq, result.reason) == (False, 6, verification.GAP)


async def test_the_first_kept_record_must_follow_the_anchor(database: Database, pruned: list[str]) -> None:
    """A forger re-hashes the first kept record onto another predecessor: the anchor tells."""
    first = dict((await rows(database))[0], prev_hash="b" * 64)
    await execute(
        database,
        "UPDATE audit_records SET prev_hash = :p, hash = :h WHERE seq = 6",
        p=first["prev_hash"],
        h=documented_hash(first),
    )
    result = await verify(database, checkpoint_key=KEY.public_key())
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (
        False,
        6,
        pruned[0],
        verification.CHECKPOINT_ANCHOR,
    )


async def test_pruning_again_uses_the_newest_checkpoint(database: Database, pruned: list[str]) -> None:
    cutoff = datetime.now(UTC)
    await append(database, 2)
    result = await prune(database, before=cutoff, signer=KEY)
    assert (result.deleted, result.first_kept_seq) == (4, 10)
    checked = await verify(database, checkpoint_key=KEY.public_key())
    assert (checked.ok, checked.first_seq, checked.last_seq) == (True, 10, 12)
    # Deleting the newest checkpoint falls back on the older one, which no longer fits.
    await execute(database, "DELETE FROM audit_checkpoints WHERE first_kept_seq = 10")
    stale = await verify(database, checkpoint_key=KEY.public_key())
    assert (stale.ok, stale.bad_seq, stale.reason) == (False, 10, verification.GAP)


async def test_pruning_everything_keeps_the_note_of_it(database: Database) -> None:
    await append(database, 3)
    result = await prune(database, before=datetime.now(UTC), signer=KEY)
    assert (result.deleted, result.first_kept_seq) == (3, 4)
    assert [row["action"] for row in await rows(database)] == ["audit.pruned"]
    assert (await verify(database, checkpoint_key=KEY.public_key())).ok


async def test_nothing_to_prune_writes_no_checkpoint(database: Database) -> None:
    await append(database, 2)
    result = await prune(database, before=datetime.now(UTC) - timedelta(days=1), signer=KEY)
    assert (result.deleted, result.checkpoint_id) == (0, None)
    assert [row["action"] for row in await rows(database)][-1] == "audit.pruned"
    assert (await verify(database)).ok


async def test_pruning_refuses_a_broken_chain(database: Database) -> None:
    await append(database, 4)
    await execute(database, "UPDATE audit_records SET actor_name = 'x' WHERE seq = 2")
    with pytest.raises(AuditChainBrokenError) as caught:
        await prune(database, before=datetime.now(UTC), signer=KEY)
    assert caught.value.result.bad_seq == 2
    assert len(await rows(database)) == 4


@pytest.mark.parametrize(
    "before",
    [datetime(2026, 1, 1), datetime.now(UTC) + timedelta(hours=1)],  # noqa: DTZ001 - naive on purpose
)
async def test_pruning_refuses_naive_and_future_cutoffs(database: Database, before: datetime) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        await prune(database, before=before, signer=KEY)


# --- key and command --------------------------------------------------------------------------


def test_the_checkpoint_key_is_created_once_and_private(tmp_path: Path) -> None:
    path = checkpoint_key_path(tmp_path)
    assert path == tmp_path / "pki" / "audit-checkpoint.key"
    assert load_checkpoint_public_key(path) is None
    key = load_or_create_checkpoint_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = load_or_create_checkpoint_key(path)
    assert again.private_bytes_raw() == key.private_bytes_raw()
    public = load_checkpoint_public_key(path)
    assert public is not None
    assert public.public_bytes_raw() == key.public_key().public_bytes_raw()
    assert [p.name for p in path.parent.iterdir()] == ["audit-checkpoint.key"]


async def test_cli_prunes_and_verifies_with_the_data_dirs_key(database: Database, tmp_path: Path) -> None:
    await append(database, 4)
    cutoff = datetime.now(UTC)
    await append(database, 2)
    where = ["--database-url", database.url, "--data-dir", str(tmp_path)]
    result = await run_fleetkeeper_async("audit", "prune", "--before", cutoff.isoformat(), *where)
    assert result.returncode == 0, result.stderr
    assert "pruned 4 records" in result.stdout
    assert os.stat(checkpoint_key_path(tmp_path)).st_mode & 0o777 == 0o600
    note = (await rows(database))[-1]
    assert note["action"] == "audit.pruned"
    assert note["actor_name"].startswith("cli:")

    verified = await run_fleetkeeper_async("audit", "verify", *where)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[0] == "audit chain intact: 3 records, seq 5..7"

    checkpoint_key_path(tmp_path).unlink()
    unkeyed = await run_fleetkeeper_async("audit", "verify", *where)
    assert unkeyed.returncode == 1
    assert verification.CHECKPOINT_NO_KEY in unkeyed.stdout


@pytest.mark.parametrize(
    ("before", "message"),
    [
        ("2026-01-01T00:00:00", "time zone"),
        ("soon", "RFC 3339"),
        ((datetime.now(UTC) + timedelta(days=1)).isoformat(), "future"),
    ],
    ids=["no zone", "not a time", "future"],
)
async def test_cli_refuses_bad_cutoffs(tmp_path: Path, before: str, message: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = await run_fleetkeeper_async("audit", "prune", "--before", before, "--database-url", url)
    assert result.returncode == 1
    assert message in result.stderr
    assert not checkpoint_key_path(tmp_path).exists()

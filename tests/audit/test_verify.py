"""Verification: every kind of tampering done directly in the database is caught and named."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from fleetkeeper.audit import verification, verify
from fleetkeeper.audit.chain import format_time, record_hash
from fleetkeeper.audit.verification import read_chain
from fleetkeeper.core.db import Database
from tests.audit.helpers import append, documented_hash, execute, insert_row, rows
from tests.conftest import run_fleetkeeper_async

V = verification  # the reasons


@pytest.fixture
async def chain(database: Database) -> list[str]:
    """Six records; returns their ids, seq 1..6."""
    return await append(database, 6)


async def swap_contents(database: Database, a: int, b: int) -> None:
    """Exchanges everything but seq between two records (ids are unique, hence three steps)."""
    stored = {row["seq"]: row for row in await rows(database)}
    columns = [name for name in stored[a] if name != "seq"]
    await execute(database, "UPDATE audit_records SET id = 'aud_tmp' WHERE seq = :b", b=b)
    for target, source in ((a, stored[b]), (b, stored[a])):
        assignments = ", ".join(f"{name} = :{name}" for name in columns if name != "occurred_at")
        values = {name: source[name] for name in columns if name != "occurred_at"}
        sql = f"UPDATE audit_records SET {assignments} WHERE seq = :target"  # noqa: S608
        await execute(database, sql, target=target, **values)


async def test_a_changed_field_is_caught_at_its_record(database: Database, chain: list[str]) -> None:
    await execute(database, "UPDATE audit_records SET actor_name = 'mallory' WHERE seq = 3")
    result = await verify(database)
    assert not result.ok
    assert (result.bad_seq, result.bad_id, result.reason) == (3, chain[2], V.ALTERED)
    assert result.checked == 2


@pytest.mark.parametrize("column", ["details", "outcome", "prev_hash", "hash", "id"])
async def test_any_changed_column_is_caught(database: Database, chain: list[str], column: str) -> None:
    value = {"details": '{"number":99}', "outcome": "denied", "prev_hash": "f" * 64, "hash": "e" * 64}
    sql = f"UPDATE audit_records SET {column} = :value WHERE seq = 4"  # noqa: S608
    await execute(database, sql, value=value.get(column, "aud_x"))
    result = await verify(database)
    assert not result.ok
    assert result.bad_seq == 4
    assert result.reason == V.ALTERED


async def test_a_value_of_the_wrong_type_is_caught(database: Database, chain: list[str]) -> None:
    await execute(database, "UPDATE audit_records SET actor_id = 42 WHERE seq = 2")  # PostgreSQL casts it
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.reason) == (False, 2, V.ALTERED)


async def test_a_deleted_middle_record_is_caught_after_the_gap(database: Database, chain: list[str]) -> None:
    await execute(database, "DELETE FROM audit_records WHERE seq = 3")
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 4, chain[3], V.GAP)


async def test_a_deleted_newest_record_is_caught_by_the_head(database: Database, chain: list[str]) -> None:
    await execute(database, "DELETE FROM audit_records WHERE seq >= 5")
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 5, None, V.HEAD_BEHIND)


async def test_deleting_everything_but_the_head_is_caught(database: Database, chain: list[str]) -> None:
    await execute(database, "DELETE FROM audit_records")
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.reason) == (False, 1, V.HEAD_BEHIND)


async def test_two_swapped_records_are_caught(database: Database, chain: list[str]) -> None:
    await swap_contents(database, 3, 4)
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 3, chain[3], V.ALTERED)


async def test_swapped_records_with_recomputed_hashes_break_the_links(
    database: Database, chain: list[str]
) -> None:
    """A forger who knows the format re-hashes the swapped records; the links still give them away."""
    await swap_contents(database, 3, 4)
    for row in await rows(database):
        if row["seq"] in (3, 4):
            await execute(
                database,
                "UPDATE audit_records SET hash = :h WHERE seq = :s",
                h=documented_hash(row),
                s=row["seq"],
            )
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 3, chain[3], V.LINK)


async def test_a_forged_record_in_place_of_a_deleted_one_breaks_the_next_link(
    database: Database, chain: list[str]
) -> None:
    stored = await rows(database)
    forged = dict(stored[2], id="aud_forged", actor_name="mallory")
    forged["hash"] = documented_hash(forged)
    await execute(database, "DELETE FROM audit_records WHERE seq = 3")
    await insert_row(database, forged)
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 4, chain[3], V.LINK)


async def test_a_forged_record_appended_without_the_head_is_caught(
    database: Database, chain: list[str]
) -> None:
    newest = (await rows(database))[-1]
    forged = dict(newest, seq=7, id="aud_forged", prev_hash=newest["hash"])
    forged["hash"] = documented_hash(forged)
    await insert_row(database, forged)
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 7, "aud_forged", V.HEAD_AHEAD)


async def test_a_forged_record_before_the_first_is_caught(database: Database, chain: list[str]) -> None:
    forged = dict((await rows(database))[0], seq=0, id="aud_forged")
    await insert_row(database, forged)
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 0, "aud_forged", V.UNEXPECTED)


async def test_a_replaced_newest_record_is_caught_by_the_head(database: Database, chain: list[str]) -> None:
    newest = (await rows(database))[-1]
    await execute(database, "UPDATE audit_records SET actor_name = 'mallory' WHERE seq = 6")
    replaced = dict(newest, actor_name="mallory")
    await execute(database, "UPDATE audit_records SET hash = :h WHERE seq = 6", h=documented_hash(replaced))
    result = await verify(database)
    assert (result.ok, result.bad_seq, result.bad_id, result.reason) == (False, 6, chain[5], V.HEAD_REPLACED)


async def test_a_deleted_head_row_is_caught(database: Database, chain: list[str]) -> None:
    await execute(database, "DELETE FROM audit_head")
    result = await verify(database)
    assert (result.ok, result.reason) == (False, V.HEAD_MISSING)


async def test_small_batches_verify_the_same_chain(database: Database, chain: list[str]) -> None:
    for size in (1, 5, 6, 7):
        result = await verify(database, batch_size=size)
        assert (result.ok, result.checked, result.last_seq) == (True, 6, 6)
    await execute(database, "DELETE FROM audit_records WHERE seq = 6")
    assert (await verify(database, batch_size=3)).reason == V.HEAD_BEHIND


async def test_a_break_in_an_early_batch_leaves_connection_and_collector_as_they_were(
    database: Database, chain: list[str]
) -> None:
    """The walk stops while the next batch is already being read; it waits for that read, so the
    connection goes back to the pool idle, and it turns the paused garbage collector back on."""
    await execute(database, "UPDATE audit_records SET actor_name = 'mallory' WHERE seq = 2")
    for _ in range(2):  # the second walk gets the same pooled connection
        result = await verify(database, batch_size=2)
        assert (result.ok, result.bad_seq, result.reason, result.checked) == (False, 2, V.ALTERED, 1)
        assert gc.isenabled()


async def test_overlapping_verifications_turn_the_collector_back_on_once(
    database: Database, chain: list[str]
) -> None:
    results = await asyncio.gather(*(verify(database, batch_size=size) for size in (1, 2, 4)))
    assert [result.checked for result in results] == [6, 6, 6]
    assert gc.isenabled()


async def test_read_chain_yields_every_record_in_order(database: Database, chain: list[str]) -> None:
    seen = [(row[0], row[1]) async for batch in read_chain(database, batch_size=4) for row in batch]
    assert seen == [(seq, chain[seq - 1]) for seq in range(1, 7)]
    assert gc.isenabled()


def test_the_hash_covers_every_field_in_the_documented_format() -> None:
    from datetime import UTC, datetime

    fields = {
        "seq": 1,
        "id": "aud_x",
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "actor_kind": "user",
        "actor_id": "usr_1",
        "actor_name": "ünïcode",
        "actor_address": None,
        "action": "user.created",
        "object_type": "user",
        "object_id": "usr_2",
        "outcome": "success",
        "details": "{}",
        "prev_hash": "0" * 64,
    }
    assert format_time(fields["occurred_at"]) == "2026-01-02T03:04:05.000000Z"  # type: ignore[arg-type]
    ours = record_hash(**{**fields, "occurred_at": format_time(fields["occurred_at"])})  # type: ignore[arg-type]
    assert ours == documented_hash(fields)
    # Text that JSON must escape, or must not: quotes, backslashes, controls, non-ASCII, separators.
    for tricky in ['a"b', "back\\slash", "tab\tnew\nline\x00\x1f", "ü€𝄞", "\u2028\u2029", "</script>", ""]:
        odd = dict(fields, actor_name=tricky, details=tricky, object_id=tricky)
        assert record_hash(**{**odd, "occurred_at": format_time(fields["occurred_at"])}) == documented_hash(
            odd
        )  # type: ignore[arg-type]
    for name in fields:
        changed = dict(fields, **{name: "changed" if name != "seq" else 2})
        if name == "occurred_at":
            changed[name] = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
        assert documented_hash(changed) != ours


# --- the command ------------------------------------------------------------------------------


async def test_cli_says_the_chain_is_intact(database: Database, chain: list[str], tmp_path: Path) -> None:
    result = await run_fleetkeeper_async(
        "audit", "verify", "--database-url", database.url, "--data-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "audit chain intact: 6 records, seq 1..6"


async def test_cli_names_the_altered_record_and_fails(
    database: Database, chain: list[str], tmp_path: Path
) -> None:
    await execute(database, "UPDATE audit_records SET action = 'user.deleted' WHERE seq = 2")
    result = await run_fleetkeeper_async(
        "audit", "verify", "--database-url", database.url, "--data-dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert result.stdout.strip() == f"audit chain broken at record seq 2 (id {chain[1]}): {V.ALTERED}"


async def test_cli_names_a_missing_newest_record(
    database: Database, chain: list[str], tmp_path: Path
) -> None:
    await execute(database, "DELETE FROM audit_records WHERE seq = 6")
    result = await run_fleetkeeper_async(
        "audit", "verify", "--database-url", database.url, "--data-dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert result.stdout.strip() == f"audit chain broken at record seq 6 (record missing): {V.HEAD_BEHIND}"


async def test_cli_refuses_a_database_without_the_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    result = await run_fleetkeeper_async(
        "audit", "verify", "--database-url", url, "--data-dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert "fleetkeeper db upgrade" in result.stderr

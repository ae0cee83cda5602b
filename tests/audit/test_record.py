"""Appending: the chain links, rollback, redaction, size and input checks, concurrent appenders."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from fleetkeeper.audit import SYSTEM, Actor, record, verify
from fleetkeeper.audit.chain import GENESIS_HASH, MAX_DETAILS_BYTES, REDACTED
from fleetkeeper.audit.models import AuditHead, AuditRecord
from fleetkeeper.core.db import Database
from tests.audit.helpers import ALICE, append, documented_hash, execute, rows


async def head(database: Database) -> tuple[int, str] | None:
    async with database.session() as session:
        row = (await session.execute(select(AuditHead.seq, AuditHead.hash))).one_or_none()
        return (row.seq, row.hash) if row else None


async def test_records_form_a_chain_from_genesis_and_move_the_head(database: Database) -> None:
    ids = await append(database, 3)
    stored = await rows(database)
    assert [row["seq"] for row in stored] == [1, 2, 3]
    assert [row["id"] for row in stored] == ids
    assert all(row["id"].startswith("aud_") for row in stored)
    assert stored[0]["prev_hash"] == GENESIS_HASH
    assert [row["prev_hash"] for row in stored[1:]] == [row["hash"] for row in stored[:-1]]
    # The documented format, re-implemented independently, gives the stored hashes.
    assert [documented_hash(row) for row in stored] == [row["hash"] for row in stored]
    assert await head(database) == (3, stored[-1]["hash"])
    first = stored[0]
    assert (first["actor_kind"], first["actor_id"], first["actor_name"], first["actor_address"]) == (
        "user",
        "usr_alice",
        "alice",
        "192.0.2.10",
    )
    assert first["details"] == '{"number":0}'
    assert first["occurred_at"].tzinfo is not None

    result = await verify(database)
    assert result.ok
    assert (result.checked, result.first_seq, result.last_seq) == (3, 1, 3)
    assert result.head_hash == stored[-1]["hash"]


async def test_an_empty_log_verifies(database: Database) -> None:
    result = await verify(database)
    assert result.ok
    assert result.checked == 0


async def test_a_record_rolls_back_with_the_callers_transaction(database: Database) -> None:
    await append(database, 1)

    async def failing_change() -> None:
        async with database.transaction() as session:
            await record(session, actor=SYSTEM, action="thing.changed", object_type="thing", object_id="t1")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert [row["seq"] for row in await rows(database)] == [1]
    await append(database, 1)
    assert [row["seq"] for row in await rows(database)] == [1, 2]
    assert (await verify(database)).ok


async def test_the_head_row_is_recreated_when_its_table_was_emptied(database: Database) -> None:
    await execute(database, "DELETE FROM audit_head")
    await append(database, 2)
    assert (await head(database) or (0, ""))[0] == 2
    assert (await verify(database)).ok


async def test_secrets_are_redacted_at_any_depth(database: Database) -> None:
    details = {
        "username": "bob",
        "password": "hunter2",
        "new_Password": "x",
        "apiToken": "tok",
        "nested": {
            "client-secret": "s",
            "list": [{"private-key": "k", "PrivateKey": "k2", "kept": 1}, "plain"],
            "totp_code": "123456",
            "Authorization": "Bearer abc",
        },
        "recovery_codes": ["a", "b"],
        "session_cookie": "c",
        "credentials": {"user": "u"},
        "otp": "1",
    }
    async with database.transaction() as session:
        entry = await record(
            session,
            actor=ALICE,
            action="user.updated",
            object_type="user",
            object_id="usr_b",
            details=details,
        )
    assert entry.details_object() == {
        "username": "bob",
        "password": REDACTED,
        "new_Password": REDACTED,
        "apiToken": REDACTED,
        "nested": {
            "client-secret": REDACTED,
            "list": [{"private-key": REDACTED, "PrivateKey": REDACTED, "kept": 1}, "plain"],
            "totp_code": REDACTED,
            "Authorization": REDACTED,
        },
        "recovery_codes": REDACTED,
        "session_cookie": REDACTED,
        "credentials": REDACTED,
        "otp": REDACTED,
    }
    stored = (await rows(database))[0]["details"]
    for secret in ("hunter2", "tok", "123456", "Bearer", "k2"):
        assert secret not in stored


async def test_oversized_details_are_summarised(database: Database) -> None:
    async with database.transaction() as session:
        await record(
            session,
            actor=SYSTEM,
            action="thing.changed",
            object_type="thing",
            object_id=None,
            details={"note": "x" * (MAX_DETAILS_BYTES - 20)},
        )
    async with database.transaction() as session:
        big = await record(
            session,
            actor=SYSTEM,
            action="thing.changed",
            object_type="thing",
            object_id=None,
            details={"note": "é" * (MAX_DETAILS_BYTES // 2), "who": "x"},  # two bytes each in UTF-8
        )
    summary = big.details_object()
    assert summary["truncated"] is True
    assert summary["keys"] == ["note", "who"]
    assert summary["size"] > MAX_DETAILS_BYTES
    assert len(await rows(database)) == 2, "the action is recorded, its details summarised"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "User.Created"),
        ("action", "user"),
        ("action", "user..created"),
        ("action", "user.created "),
        ("action", "user." + "x" * 80),
        ("object_type", "User"),
        ("object_type", "a.b"),
        ("outcome", "maybe"),
        ("details", {"blob": b"\x00"}),
        ("details", {1: "not a string key"}),
        ("details", {"ratio": float("nan")}),
        ("details", {"when": __import__("datetime").datetime(2026, 1, 1)}),  # naive
        ("actor", Actor(kind="robot", name="r2")),  # type: ignore[arg-type]
    ],
)
async def test_invalid_input_is_refused(database: Database, field: str, value: object) -> None:
    arguments: dict[str, object] = {
        "actor": SYSTEM,
        "action": "thing.changed",
        "object_type": "thing",
        "object_id": None,
        field: value,
    }
    with pytest.raises(ValueError):  # noqa: PT011
        async with database.transaction() as session:
            await record(session, **arguments)  # type: ignore[arg-type]
    assert await rows(database) == []


async def test_client_supplied_names_are_clipped_not_refused(database: Database) -> None:
    attacker = Actor(kind="anonymous", name="n" * 1000, address="a" * 100)
    async with database.transaction() as session:
        entry = await record(
            session,
            actor=attacker,
            action="auth.sign_in",
            object_type="user",
            object_id="o" * 1000,
            outcome="failure",
        )
    assert len(entry.actor_name or "") == 255
    assert (entry.actor_name or "").endswith("…")
    assert len(entry.object_id or "") == 255
    assert (await verify(database)).ok


async def test_concurrent_appenders_in_one_process_leave_one_chain(database: Database) -> None:
    async def appender(worker: int) -> None:
        for number in range(15):
            async with database.transaction() as session:
                await record(
                    session,
                    actor=Actor(kind="device", id=f"dev_{worker}"),
                    action="device.checked_in",
                    object_type="device",
                    object_id=f"dev_{worker}",
                    details={"number": number},
                )
                await asyncio.sleep(0)  # let others queue on the head while this one holds it

    await asyncio.gather(*(appender(worker) for worker in range(8)))
    result = await verify(database)
    assert result.ok, result
    assert (result.checked, result.first_seq, result.last_seq) == (120, 1, 120)
    async with database.session() as session:
        per_worker = (
            await session.execute(select(AuditRecord.actor_id, AuditRecord.seq).order_by(AuditRecord.seq))
        ).all()
    assert {actor for actor, _ in per_worker} == {f"dev_{worker}" for worker in range(8)}

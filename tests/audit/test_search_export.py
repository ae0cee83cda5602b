"""Search with filters and cursors; export as JSON lines and CSV, from the API and the command."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetkeeper.audit import Actor, AuditFilter, export_csv, export_jsonl, search
from fleetkeeper.audit.export import FIELDS
from fleetkeeper.core.db import Database
from fleetkeeper.core.errors import ProblemError
from tests.audit.helpers import ALICE, append, rows
from tests.conftest import run_fleetkeeper_async

BOB = Actor(kind="user", id="usr_bob", name="bob")
DEVICE = Actor(kind="device", id="dev_1", name='=HYPERLINK("http://evil")', address="-1+2")


@pytest.fixture
async def mixed(database: Database) -> datetime:
    """A varied log; returns a time between the first six records and the rest."""
    await append(database, 3, action="user.created", object_type="user", actor=ALICE)
    await append(database, 2, action="user.signed_in", object_type="user", actor=BOB, outcome="failure")
    await append(database, 1, action="userx.created", object_type="user", actor=BOB)
    middle = datetime.now(UTC)
    await append(
        database, 2, action="device.enrolled", object_type="device", actor=DEVICE, object_id="@SUM(A1)"
    )
    await append(database, 1, action="release.uploaded", object_type="release", actor=ALICE, outcome="denied")
    return middle


async def find(database: Database, **filters: object) -> list[int]:
    async with database.session() as session:
        page = await search(session, AuditFilter(**filters), limit=500)  # type: ignore[arg-type]
    return [item.seq for item in page.items]


async def test_filters(database: Database, mixed: datetime) -> None:
    assert await find(database) == list(range(9, 0, -1))
    assert await find(database, actor="usr_bob") == [6, 5, 4]
    assert await find(database, actor="bob") == [6, 5, 4]
    assert await find(database, actor="alice") == [9, 3, 2, 1]
    assert await find(database, action="user.created") == [3, 2, 1]
    assert await find(database, action="user.*") == [5, 4, 3, 2, 1]
    assert await find(database, action="device.*") == [8, 7]
    assert await find(database, object_type="device", object_id="@SUM(A1)") == [8, 7]
    assert await find(database, object_type="user", object_id="thing_0") == [6, 4, 1]
    assert await find(database, outcome="failure") == [5, 4]
    assert await find(database, outcome="denied", actor="alice") == [9]
    assert await find(database, since=mixed) == [9, 8, 7]
    assert await find(database, until=mixed) == [6, 5, 4, 3, 2, 1]
    assert await find(database, since=mixed, until=mixed + timedelta(days=1), action="device.enrolled") == [
        8,
        7,
    ]
    assert await find(database, action="nothing.here") == []


async def test_a_prefix_treats_underscore_as_itself(database: Database) -> None:
    await append(database, 1, action="user_x.created")
    await append(database, 1, action="userax.created")
    assert await find(database, action="user_x.*") == [1]


@pytest.mark.parametrize(
    "filters",
    [
        {"since": datetime(2026, 1, 1)},  # noqa: DTZ001 - naive on purpose
        {"until": datetime(2026, 1, 1)},  # noqa: DTZ001
        {"action": "user.%*"},
        {"action": ".*"},
        {"outcome": "maybe"},
    ],
)
async def test_malformed_filters_are_problems(database: Database, filters: dict[str, object]) -> None:
    with pytest.raises(ProblemError) as caught:
        await find(database, **filters)
    assert caught.value.code == "invalid_filter"


async def test_pages_follow_the_cursor_newest_first(database: Database) -> None:
    await append(database, 25)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        async with database.session() as session:
            page = await search(session, AuditFilter(), limit=10, cursor=cursor)
        seen += [item.seq for item in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert seen == list(range(25, 0, -1))


async def test_an_exact_last_page_has_no_cursor(database: Database) -> None:
    await append(database, 10)
    async with database.session() as session:
        page = await search(session, AuditFilter(), limit=10)
    assert page.next_cursor is None
    assert len(page.items) == 10


def _cursor(payload: bytes) -> str:
    return "a1." + base64.urlsafe_b64encode(payload).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "garbage",
        "a1.!!!!",
        "a1." + "A" * 200,
        _cursor(b"not json"),
        _cursor(b'["before", 5]'),
        _cursor(b'{"before": "5 OR 1=1"}'),
        _cursor(b'{"before": true}'),
        _cursor(b'{"before": -1}'),
        _cursor(b'{"before": 1e3}'),
        _cursor(b'{"before": 99999999999999999999999}'),
    ],
)
async def test_a_bad_cursor_is_a_problem(database: Database, cursor: str) -> None:
    async with database.session() as session:
        with pytest.raises(ProblemError) as caught:
            await search(session, AuditFilter(), cursor=cursor)
    assert caught.value.code == "invalid_cursor"


@pytest.mark.parametrize("limit", [0, -1, 501])
async def test_the_limit_is_bounded(database: Database, limit: int) -> None:
    async with database.session() as session:
        with pytest.raises(ProblemError) as caught:
            await search(session, AuditFilter(), limit=limit)
    assert caught.value.code == "invalid_limit"


# --- export -----------------------------------------------------------------------------------


async def collect(chunks: object) -> str:
    return "".join([chunk async for chunk in chunks])  # type: ignore[attr-defined]


async def test_jsonl_export_holds_every_field_oldest_first(database: Database, mixed: datetime) -> None:
    text = await collect(export_jsonl(database, AuditFilter(action="user.*"), batch_size=2))
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    stored = {row["seq"]: row for row in await rows(database)}
    first = lines[0]
    assert list(first) == list(FIELDS)
    assert first["details"] == {"number": 0}
    assert first["occurred_at"].endswith("Z")
    assert datetime.fromisoformat(first["occurred_at"]) == stored[1]["occurred_at"]
    assert (first["hash"], first["prev_hash"], first["id"]) == (
        stored[1]["hash"],
        stored[1]["prev_hash"],
        stored[1]["id"],
    )
    assert (first["actor_id"], first["actor_name"], first["actor_address"]) == (
        "usr_alice",
        "alice",
        "192.0.2.10",
    )


async def test_csv_export_is_safe_to_open_in_a_spreadsheet(database: Database, mixed: datetime) -> None:
    text = await collect(export_csv(database, AuditFilter(), batch_size=4))
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == list(FIELDS)
    assert [int(row[0]) for row in table[1:]] == list(range(1, 10))
    device_row = dict(zip(FIELDS, table[7], strict=True))
    assert device_row["actor_name"] == '\'=HYPERLINK("http://evil")'
    assert device_row["actor_address"] == "'-1+2"
    assert device_row["object_id"] == "'@SUM(A1)"
    assert device_row["details"] == '{"number":0}'
    for row in table[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@"))


async def test_an_empty_csv_export_is_a_header(database: Database) -> None:
    text = await collect(export_csv(database, AuditFilter()))
    assert text.strip() == ",".join(FIELDS)


async def test_a_bad_filter_fails_before_any_output(database: Database) -> None:
    exported = export_csv(database, AuditFilter(outcome="maybe"))
    with pytest.raises(ProblemError):
        await anext(exported)


async def test_cli_exports_to_a_private_file(database: Database, mixed: datetime, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    result = await run_fleetkeeper_async(
        "audit", "export", "--format", "jsonl", "--action", "device.*", "--since", mixed.isoformat(),
        "-o", str(out), "--database-url", database.url, "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [7, 8]


async def test_cli_exports_csv_to_standard_output(
    database: Database, mixed: datetime, tmp_path: Path
) -> None:
    result = await run_fleetkeeper_async(
        "audit", "export", "--format", "csv", "--outcome", "failure",
        "--database-url", database.url, "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert [row[0] for row in table] == ["seq", "4", "5"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "2026-01-01T00:00:00"], "time zone"),
        (["--until", "yesterday"], "RFC 3339"),
        (["--action", "User.*"], "malformed"),
    ],
)
async def test_cli_refuses_bad_filters(
    database: Database, tmp_path: Path, arguments: list[str], message: str
) -> None:
    out = tmp_path / "out.csv"
    result = await run_fleetkeeper_async(
        "audit", "export", *arguments, "-o", str(out), "--database-url", database.url
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert not out.exists()

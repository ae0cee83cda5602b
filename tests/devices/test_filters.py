"""The device filter language on SQLite and PostgreSQL: what each operator and field kind matches,
which errors name which position, and that no filter can change the SQL it becomes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.dialects import postgresql, sqlite

from fleetkeeper.core.db import Database
from fleetkeeper.core.errors import ProblemError, problem_body
from fleetkeeper.devices.filters import (
    MAX_LENGTH,
    And,
    Comparison,
    FilterError,
    Has,
    Not,
    Or,
    compile_filter,
    parse,
    referenced_fields,
    to_sql,
)
from fleetkeeper.devices.models import Device, DeviceAttribute, DeviceGroup, GroupMember

ALL = {f"d{number:02d}" for number in range(1, 13)}
EXAMPLE = 'device_type == "rpi4" and os.version < "12" and tag.site == "plant-3"'
EVIL_NOTE = "'; DROP TABLE devices; --"

# name: (device_type, status, serial, {attribute: value}); numbers are stored as text and number.
FLEET: dict[str, tuple[str, str, str | None, dict[str, str | float]]] = {
    "d01": ("rpi4", "accepted", "SN-001", {"os.version": "11", "tag.site": "plant-3", "kernel_major": 6}),
    "d02": ("rpi4", "accepted", "SN-002", {"os.version": "12", "tag.site": "plant-3", "kernel_major": 5}),
    "d03": ("rpi4", "pending", None, {"os.version": "10", "tag.site": "plant-1", "kernel_major": 5.1}),
    "d04": ("rpi3", "accepted", "SN-004", {"os.version": "11", "tag.site": "plant-3", "kernel_major": 4}),
    "d05": ("jetson", "accepted", "SN-005", {"os.version": "9", "tag.site": "plant-2", "kernel_major": 10}),
    "d06": ("x86", "decommissioned", "SN-006", {"tag.site": "plant-3", "kernel_major": "unknown"}),
    "d07": ("rpi4", "accepted", "SN-007", {"os.version": "11", "tag.site": "Plant-3", "tag.promo": "x/y"}),
    "d08": ("rpi4", "accepted", None, {"os.version": "11", "tag.promo": "a*b[c]"}),
    "d09": ("x86", "accepted", "SN-009", {"tag.promo": "50%_off", "software.secure_boot": "true"}),
    "d10": ("x86", "accepted", "SN-010", {"tag.promo": "50x_off", "software.secure_boot": "false"}),
    "d11": ("x86", "accepted", "SN-011", {"tag.promo": "50%yoff"}),
    "d12": (
        "rpi4",
        "accepted",
        'C:\\temp\\"x',
        {"tag.note": EVIL_NOTE, "tag.city": "zürich-☃", "tag.owner": "O'Reilly", "tag.path": "a\\b"},
    ),
}
LAST_SEEN = {"d01": datetime(2026, 10, 1, tzinfo=UTC), "d02": datetime(2026, 11, 15, tzinfo=UTC)}
GROUPS = {"lab": ("static", ["d01", "d04"]), "field": ("static", ["d02"]), "dyn": ("dynamic", ["d03"])}


def _attribute(device_id: str, key: str, value: str | float) -> DeviceAttribute:
    if isinstance(value, str):
        return DeviceAttribute(device_id=device_id, key=key, value_text=value, value_num=None)
    text = str(value) if isinstance(value, float) and not value.is_integer() else str(int(value))
    return DeviceAttribute(device_id=device_id, key=key, value_text=text, value_num=float(value))


@pytest.fixture
async def fleet(database: Database) -> Database:
    async with database.transaction() as session:
        for number, (name, (device_type, status, serial, _)) in enumerate(FLEET.items(), 1):
            session.add(
                Device(
                    id=name,
                    status=status,
                    device_type=device_type,
                    serial=serial,
                    mac="dc:a6:32:01:02:03" if name == "d01" else None,
                    identity={},
                    public_key_pem="",
                    key_fingerprint=f"{number:064x}",
                    enrolled_via="request",
                    created_at=datetime(2026, 1, number, 12, tzinfo=UTC),
                    last_seen_at=LAST_SEEN.get(name),
                )
            )
        await session.flush()
        session.add_all(
            _attribute(name, key, value) for name, device in FLEET.items() for key, value in device[3].items()
        )
        for group_name, (kind, members) in GROUPS.items():
            session.add(DeviceGroup(id=f"grp_{group_name}", name=group_name, kind=kind))
            await session.flush()
            session.add_all(GroupMember(group_id=f"grp_{group_name}", device_id=member) for member in members)
    return database


async def matching(database: Database, expression: str) -> set[str]:
    async with database.session() as session:
        return set((await session.scalars(select(Device.id).where(compile_filter(expression)))).all())


async def device_count(database: Database) -> int:
    async with database.session() as session:
        return int((await session.execute(select(func.count()).select_from(Device))).scalar_one())


MATCHES: list[tuple[str, set[str]]] = [
    # the example, and text comparison of versions ("9" sorts after "12")
    (EXAMPLE, {"d01"}),
    ('os.version < "12"', {"d01", "d03", "d04", "d07", "d08"}),
    ('os.version >= "9"', {"d05"}),
    # columns
    ('device_type == "rpi3"', {"d04"}),
    ('device_type != "rpi4"', {"d04", "d05", "d06", "d09", "d10", "d11"}),
    ('status in ["pending", "decommissioned"]', {"d03", "d06"}),
    ('status not in ["accepted"]', {"d03", "d06"}),
    ('id in ["d01", "d12", "nope"]', {"d01", "d12"}),
    ('id > "d10"', {"d11", "d12"}),
    ('id <= "d02"', {"d01", "d02"}),
    ('serial == "SN-004"', {"d04"}),
    ('serial ~ "SN-00?"', {"d01", "d02", "d04", "d05", "d06", "d07", "d09"}),
    ('serial != "SN-001"', ALL - {"d01", "d03", "d08"}),
    ('not (serial == "SN-001")', ALL - {"d01"}),
    ('mac == "dc:a6:32:01:02:03"', {"d01"}),
    ('mac ~ "DC:*"', set()),
    ('mac != "x"', {"d01"}),
    ('not (mac == "x")', ALL),
    ("has(serial)", ALL - {"d03", "d08"}),
    ("has(device_type)", ALL),
    ("device_type in []", set()),
    ("device_type not in []", ALL),
    # attributes: present and matching; absent never matches, not() inverts
    ('tag.site == "plant-3"', {"d01", "d02", "d04", "d06"}),
    ('os.version != "12"', {"d01", "d03", "d04", "d05", "d07", "d08"}),
    ('not (os.version == "12")', ALL - {"d02"}),
    ('not os.version == "12"', ALL - {"d02"}),
    ('tag.site in ["plant-1", "plant-2"]', {"d03", "d05"}),
    ('tag.site not in ["plant-3"]', {"d03", "d05", "d07"}),
    ("tag.site not in []", {"d01", "d02", "d03", "d04", "d05", "d06", "d07"}),
    ("has(os.version)", ALL - {"d06", "d09", "d10", "d11", "d12"}),
    ("not has(os.version)", {"d06", "d09", "d10", "d11", "d12"}),
    ("has(tag.site) and not has(tag.promo)", {"d01", "d02", "d03", "d04", "d05", "d06"}),
    ("has(no.such.thing)", set()),
    # numbers compare value_num, strings value_text
    ("kernel_major > 5", {"d01", "d03", "d05"}),
    ('kernel_major > "5"', {"d01", "d03", "d06"}),
    ("kernel_major == 5.10", {"d03"}),
    ("kernel_major == 5.1", {"d03"}),
    ('kernel_major == "5.1"', {"d03"}),
    ("kernel_major != 5", {"d01", "d03", "d04", "d05"}),
    ("kernel_major >= -3", {"d01", "d02", "d03", "d04", "d05"}),
    ("kernel_major < 5", {"d04"}),
    ("kernel_major <= 5", {"d02", "d04"}),
    ("kernel_major in [4, 6]", {"d01", "d04"}),
    ("kernel_major not in [4, 6]", {"d02", "d03", "d05"}),
    # true and false are the text "true" and "false"
    ("software.secure_boot == true", {"d09"}),
    ("software.secure_boot == TRUE", {"d09"}),
    ("software.secure_boot != true", {"d10"}),
    ('software.secure_boot == "false"', {"d10"}),
    ("software.secure_boot in [false]", {"d10"}),
    # globs: * and ?, everything else literal (%, _, [, the escape character), case-sensitive
    ('tag.promo ~ "50%_*"', {"d09"}),
    ('tag.promo ~ "50?_off"', {"d09", "d10"}),
    ('tag.promo ~ "*off"', {"d09", "d10", "d11"}),
    ('tag.promo ~ "*OFF"', set()),
    ('tag.promo ~ "*%*"', {"d09", "d11"}),
    ('tag.promo ~ "*_*"', {"d09", "d10"}),
    ('tag.promo ~ "a*b[c]"', {"d08"}),
    ('tag.promo ~ "a?b[c?"', {"d08"}),
    ('tag.promo ~ "a[*]b*"', set()),
    ('tag.promo ~ "x/*"', {"d07"}),
    ('tag.promo ~ "x//y"', set()),
    ('tag.promo ~ "*"', {"d07", "d08", "d09", "d10", "d11"}),
    ('tag.site ~ "plant-?"', {"d01", "d02", "d03", "d04", "d05", "d06"}),
    ('not tag.site ~ "plant-?"', ALL - {"d01", "d02", "d03", "d04", "d05", "d06"}),
    # times: RFC 3339, any offset
    ('created_at < "2026-01-03T00:00:00Z"', {"d01", "d02"}),
    ('created_at >= "2026-01-11T13:00:00+01:00"', {"d11", "d12"}),
    ('created_at == "2026-01-05T12:00:00Z"', {"d05"}),
    ('created_at in ["2026-01-05T12:00:00Z", "2026-01-06T12:00:00.000000Z"]', {"d05", "d06"}),
    ('created_at != "2026-01-05T12:00:00Z"', ALL - {"d05"}),
    ('last_seen < "2026-11-01T00:00:00Z"', {"d01"}),
    ('last_seen > "2026-11-01t00:00:00z"', {"d02"}),
    ('not (last_seen < "2026-11-01T00:00:00Z")', ALL - {"d01"}),
    ("has(last_seen)", {"d01", "d02"}),
    # static groups by name; a dynamic group's rows do not count
    ('group == "lab"', {"d01", "d04"}),
    ('group != "lab"', ALL - {"d01", "d04"}),
    ('group in ["lab", "field"]', {"d01", "d02", "d04"}),
    ('group not in ["lab", "field"]', ALL - {"d01", "d02", "d04"}),
    ('group == "dyn"', set()),
    ('group == "nope"', set()),
    ('group == "lab" and kernel_major >= 5', {"d01"}),
    # precedence: and before or; not binds to the next term; parentheses; keywords in any case
    ('device_type == "rpi3" or device_type == "jetson" and tag.site == "plant-3"', {"d04"}),
    ('(device_type == "rpi3" or device_type == "jetson") and tag.site == "plant-2"', {"d05"}),
    ('tag.site == "plant-2" and device_type == "jetson" or device_type == "rpi3"', {"d04", "d05"}),
    ('not device_type == "rpi4" and status == "accepted"', {"d04", "d05", "d09", "d10", "d11"}),
    (
        'not (device_type == "rpi4" and status == "accepted")',
        {"d03", "d04", "d05", "d06", "d09", "d10", "d11"},
    ),
    ('not not device_type == "rpi3"', {"d04"}),
    ('NOT device_type In ["rpi4", "x86"] AnD tag.site == "plant-3" oR group == "field"', {"d02", "d04"}),
    ('device_type NOT IN ["rpi4", "x86"]', {"d04", "d05"}),
    ('((((device_type == "jetson"))))', {"d05"}),
    ('device_type=="jetson"or(device_type=="rpi3")', {"d04", "d05"}),
    ('device_type == "jetson"\n  or device_type == "rpi3"', {"d04", "d05"}),
]


@pytest.mark.parametrize(("expression", "expected"), MATCHES, ids=[case[0][:60] for case in MATCHES])
async def test_filters_match_the_expected_devices(
    fleet: Database, expression: str, expected: set[str]
) -> None:
    assert await matching(fleet, expression) == expected


# Injection attempts are literals (and match only a device that has exactly that value) or are refused;
# either way the devices table is still there with all its rows.
LITERALS: list[tuple[str, set[str]]] = [
    ('tag.note == "\'; DROP TABLE devices; --"', {"d12"}),
    ('tag.owner == "O\'Reilly"', {"d12"}),
    ("tag.owner == \"' OR '1'='1\"", set()),
    ('device_type == "rpi4\\" or 1==1 --"', set()),
    ('device_type == "x\\" or device_type != \\"x"', set()),
    ('serial == "C:\\\\temp\\\\\\"x"', {"d12"}),
    ('tag.path == "a\\\\b"', {"d12"}),
    ('tag.path ~ "a\\\\*"', {"d12"}),
    ('tag.city == "zürich-☃"', {"d12"}),
    ('tag.city ~ "z?rich-*"', {"d12"}),
    ('tag.note ~ "*DROP TABLE*"', {"d12"}),
    ('device_type == "rpi4\'); DELETE FROM devices; --"', set()),
    ('device_type == "$1" or device_type == "?" or device_type == ":device_type_1"', set()),
    ('tag.site == "%" or tag.site ~ "%"', set()),
]
REFUSED = [
    'device_type == "x"; DROP TABLE devices; --',
    "' OR '1'='1",
    "device_type == 'rpi4' OR '1'='1'",
    'device_type == "x" -- comment',
    'device_type == "x" /* */',
    'tag.site; DROP TABLE devices == "x"',
    'tag.site == "plant\x00-3"',
    'tag."site" == "x"',
    "device_type == rpi4 or 1 == 1",
    'devices.id == "x" union select 1',
    'device_type == "\\x41"',
    'tag.zürich == "x"',
]


@pytest.mark.parametrize(("expression", "expected"), LITERALS, ids=[case[0] for case in LITERALS])
async def test_injection_attempts_are_literals(fleet: Database, expression: str, expected: set[str]) -> None:
    assert await matching(fleet, expression) == expected
    assert await device_count(fleet) == 12
    async with fleet.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    assert {"devices", "device_attributes"} <= set(tables)


@pytest.mark.parametrize("expression", REFUSED)
async def test_injection_attempts_that_are_not_filters_are_refused(fleet: Database, expression: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(expression)
    assert await device_count(fleet) == 12


@pytest.mark.parametrize(
    "evil",
    [EVIL_NOTE, "' OR '1'='1", 'x" or "1"=="1', "\\", "é☃\u202e", "%s %(x)s $1 ? :name", "a'b\"c"],
)
def test_a_value_never_changes_the_sql(evil: str) -> None:
    quoted = evil.replace("\\", "\\\\").replace('"', '\\"')
    reference = 'device_type == "x" and tag.site ~ "x" and os.version in ["x", "y"] and group == "x"'
    attempt = reference.replace('"x"', f'"{quoted}"')
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        compiled = [
            select(Device.id).where(compile_filter(text)).compile(dialect=dialect)
            for text in (reference, attempt)
        ]
        assert str(compiled[0]) == str(compiled[1])
        assert evil in compiled[1].params.values()
        assert evil not in str(compiled[1])


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "postgresql"])
def test_compiled_sql_binds_every_value(dialect: Any) -> None:
    expression = (
        f'{EXAMPLE} and kernel_major > 41.5 and created_at < "2026-11-01T00:00:00Z" '
        'and group in ["lab-9"] and tag.promo ~ "half*" and has(software.openssl)'
    )
    compiled = select(Device.id).where(compile_filter(expression)).compile(dialect=dialect)
    sql = str(compiled)
    for literal in ("rpi4", "os.version", "plant-3", "tag.site", "41.5", "2026", "lab-9", "half", "openssl"):
        assert literal not in sql
    values = set()
    for value in compiled.params.values():
        values.update(value if isinstance(value, list) else [value])
    assert {"rpi4", "os.version", "12", "tag.site", "plant-3", 41.5, "software.openssl"} <= values
    assert datetime(2026, 11, 1, tzinfo=UTC) in values
    assert "EXISTS" in sql


def test_parse_builds_the_syntax_tree() -> None:
    assert parse(EXAMPLE) == And(
        (
            Comparison("device_type", "==", "rpi4"),
            Comparison("os.version", "<", "12"),
            Comparison("tag.site", "==", "plant-3"),
        )
    )
    assert parse('a == 1 or b == "2" and not has(c)') == Or(
        (Comparison("a", "==", 1.0), And((Comparison("b", "==", "2"), Not(Has("c")))))
    )
    assert parse('x nOt In [true, "y"]') == Comparison("x", "not in", (True, "y"))
    assert parse('s == "a\\"b\\\\c"') == Comparison("s", "==", 'a"b\\c')
    assert parse("n == -3") == Comparison("n", "==", -3.0)
    assert parse("note == false") == Comparison("note", "==", False)
    # keywords are whole words: fields may start with them
    assert referenced_fields(
        parse(
            'notes == "1" and inventory == "2" or order == "3" or in.x == "4" or has(truex) or tag.and == 1'
        )
    ) == {"notes", "inventory", "order", "in.x", "truex", "tag.and"}
    positions = parse('a == "1" and  b == "2"')
    assert isinstance(positions, And)
    assert [operand.position for operand in positions.operands if isinstance(operand, Comparison)] == [1, 15]


def test_referenced_fields() -> None:
    assert referenced_fields(parse(EXAMPLE)) == {"device_type", "os.version", "tag.site"}
    assert referenced_fields(
        parse('not group == "lab" or has(kernel) and last_seen > "2026-01-01T00:00:00Z"')
    ) == {
        "group",
        "kernel",
        "last_seen",
    }


def test_to_sql_checks_an_expression_built_by_hand() -> None:
    with pytest.raises(FilterError, match="compares with a string"):
        to_sql(Comparison("device_type", "==", 5.0))
    with pytest.raises(FilterError, match="bad field name"):
        to_sql(Comparison("a..b", "==", "x"))
    with pytest.raises(FilterError, match="in takes a list"):
        to_sql(Comparison("device_type", "in", "rpi4"))


ERRORS: list[tuple[str, int, str]] = [
    ("", 1, "empty"),
    ("   ", 1, "empty"),
    ('device_type == "rpi4', 16, "unterminated string"),
    ('tag.site == "a\\"', 13, "unterminated string"),
    (
        "device_type ==",
        15,
        "unexpected end of the filter at column 15: expected a string, a number, true or false",
    ),
    ('device_type == "x" and', 23, "expected a field, not or '('"),
    ('device_type == "x" or or', 23, "unexpected 'or'"),
    ('== "x"', 1, "unexpected '=='"),
    ('device_type = "x"', 13, "expected an operator (== != < <= > >= ~), in or not in"),
    ('device_type "x"', 13, "expected an operator"),
    ("device_type == rpi4", 16, "(strings are in double quotes)"),
    ("device_type == 'rpi4'", 16, "(strings are in double quotes)"),
    ('device_type == "x" device_type == "y"', 20, "expected and, or or the end of the filter"),
    ('(device_type == "x"', 20, "expected ')'"),
    ('device_type == "x")', 19, "unexpected ')'"),
    ('device_type in ["a" "b"]', 21, "expected ',' or ']'"),
    ('device_type in ["a",]', 21, "unexpected ']'"),
    ('device_type in "a"', 16, "expected '['"),
    ("lower(device_type)", 1, "unknown function 'lower'"),
    ("has()", 5, "expected a field"),
    ('has("os.version")', 5, "expected a field"),
    ("has(group)", 5, "not group"),
    ('os..version == "1"', 1, "bad field name 'os..version'"),
    ('os.version. == "1"', 1, "bad field name"),
    ('tag == "x"', 1, "needs a key"),
    ('a.b.c.d.e.f.g.h.i == "1"', 1, "at most 8 parts"),
    ("x" * 201 + ' == "1"', 1, "200 characters"),
    ('and == "1"', 1, "unexpected 'and'"),
    ('device_type == "x" and in == "1"', 24, "unexpected 'in'"),
    ('true == "1"', 1, "unexpected 'true'"),
    ('tag.site == "1" and not == "1"', 25, "unexpected '=='"),
    ("kernel == 5.", 11, "bad number"),
    ("kernel == 5x", 11, "bad number"),
    (
        "kernel == --5",
        11,
        "unexpected character '-' at column 11: expected a string, a number, true or false",
    ),
    ('os.version == "\\n"', 16, "unknown escape \\n"),
    ("serial == 5", 11, "serial compares with a string"),
    ("status == true", 11, "status compares with a string"),
    ('last_seen < "2026-11-01"', 13, "RFC 3339"),
    ('created_at > "2026-13-01T00:00:00Z"', 14, "RFC 3339"),
    ('created_at > "2026-11-01T00:00:00"', 14, "RFC 3339"),
    ('created_at ~ "2026*"', 14, "not ~"),
    ('group < "lab"', 9, "group takes"),
    ("group == 1", 10, "group compares with a group name"),
    ("kernel ~ 5", 10, "~ matches a string pattern"),
    ("flag > true", 8, "true and false take == or !="),
    ('kernel in [1, "2"]', 11, "mixes numbers with strings"),
    ('device_type == "x\x00"', 18, "U+0000"),
    ('device_type == "\ud800"', 17, "U+D800"),
]


@pytest.mark.parametrize(("expression", "position", "message"), ERRORS, ids=[case[0][:40] for case in ERRORS])
def test_errors_name_the_position_and_what_was_expected(expression: str, position: int, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(expression)
    error = caught.value
    assert isinstance(error, ProblemError)
    assert (error.status, error.code, error.position, error.extra) == (
        422,
        "invalid_filter",
        position,
        {"position": position},
    )
    assert message in error.detail
    assert f"column {position}" in error.detail
    body = problem_body(error.status, error.code, error.detail, **error.extra)
    assert (body["code"], body["position"]) == ("invalid_filter", position)


def _comparisons(count: int) -> str:
    return " or ".join(f'k{number} == "v"' for number in range(count))


def test_limits() -> None:
    padded = 'device_type == "' + "x" * (MAX_LENGTH - 17) + '"'
    assert len(padded) == MAX_LENGTH
    parse(padded)
    with pytest.raises(FilterError, match="longer than 2,000 characters") as caught:
        parse(padded + " ")
    assert caught.value.position == 2001

    parse("(" * 20 + 'a == "1"' + ")" * 20)
    with pytest.raises(FilterError, match="deeper than 20") as caught:
        parse("(" * 21 + 'a == "1"' + ")" * 21)
    assert caught.value.position == 21
    with pytest.raises(FilterError, match="deeper than 20") as caught:
        parse("not " * 10 + "(" * 11 + 'a == "1"' + ")" * 11)
    assert caught.value.position == 41 + 10
    # far past the limit, and far past Python's recursion limit, still a FilterError
    with pytest.raises(FilterError, match="deeper than 20"):
        parse("(" * 990 + 'a == "1"' + ")" * 990)
    with pytest.raises(FilterError, match="deeper than 20"):
        parse("not " * 495 + 'a == "1"')

    parse(_comparisons(50))
    with pytest.raises(FilterError, match="more than 50 comparisons") as caught:
        parse(_comparisons(51))
    assert caught.value.position == _comparisons(51).index("k50 ==") + 1
    with pytest.raises(FilterError, match="more than 50 comparisons"):
        parse(" and ".join(["has(a)"] * 51))

    parse("kernel in [" + ", ".join(["1"] * 500) + "]")
    too_many = "kernel in [" + ", ".join(["1"] * 501) + "]"
    with pytest.raises(FilterError, match="more than 500 items") as caught:
        parse(too_many)
    assert caught.value.position == len("kernel in [") + 500 * 3 + 1


async def test_a_filter_of_every_kind_runs_on_both_backends(fleet: Database) -> None:
    expression = (
        '(device_type in ["rpi4", "rpi3"] or has(software.secure_boot)) and not group == "field" '
        'and created_at < "2026-01-12T00:00:00Z" and (kernel_major >= 4 or tag.promo ~ "*off" or '
        'os.version != "12")'
    )
    assert await matching(fleet, expression) == {"d01", "d03", "d04", "d07", "d08", "d09", "d10"}

"""What a filter is made of: the syntax tree, the fields and which values each one compares with."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fleetkeeper.core.errors import ProblemError

MAX_LENGTH = 2000
MAX_NESTING = 20
MAX_COMPARISONS = 50
MAX_LIST_ITEMS = 500
MAX_PATH_SEGMENTS = 8
MAX_PATH_LENGTH = 200


class FilterError(ProblemError):
    """A filter that cannot be parsed or is out of bounds; `position` is 1-based."""

    status = 422
    code = "invalid_filter"

    def __init__(self, detail: str, position: int) -> None:
        super().__init__(detail, position=position)
        self.position = position


Operator = Literal["==", "!=", "<", "<=", ">", ">=", "~", "in", "not in"]
Value = str | float | bool  # true/false are bool; every number is a float, as value_num is


@dataclass(frozen=True)
class Comparison:
    """`field OP value`; for `in` and `not in` the value is a tuple."""

    field: str
    operator: Operator
    value: Value | tuple[Value, ...]
    position: int = dataclasses.field(default=0, compare=False)


@dataclass(frozen=True)
class Has:
    """`has(path)`: the attribute is present (for a column: it is not empty)."""

    field: str
    position: int = dataclasses.field(default=0, compare=False)


@dataclass(frozen=True)
class Not:
    operand: Expression
    position: int = dataclasses.field(default=0, compare=False)


@dataclass(frozen=True)
class And:
    operands: tuple[Expression, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Expression, ...]


Expression = Comparison | Has | Not | And | Or


def referenced_fields(expression: Expression) -> set[str]:
    """The fields an expression reads, e.g. {"device_type", "os.version", "group"}."""
    if isinstance(expression, Comparison | Has):
        return {expression.field}
    if isinstance(expression, Not):
        return referenced_fields(expression.operand)
    return set().union(*(referenced_fields(operand) for operand in expression.operands))


# --- fields -------------------------------------------------------------------------------------

FieldKind = Literal["text", "datetime", "group", "attribute"]

TEXT_FIELDS = frozenset({"id", "status", "device_type", "serial", "mac"})
DATETIME_FIELDS = frozenset({"created_at", "last_seen"})
# Columns that may be NULL are tested for presence first, so that `not (...)` inverts them the way
# it inverts an absent attribute: `not (serial == "x")` matches a device without a serial.
NULLABLE_FIELDS = frozenset({"serial", "mac", "last_seen"})
KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_ORDERING = frozenset({"<", "<=", ">", ">="})


def field_kind(name: str) -> FieldKind:
    if name in TEXT_FIELDS:
        return "text"
    if name in DATETIME_FIELDS:
        return "datetime"
    if name == "group":
        return "group"
    return "attribute"


def check_field(name: str, position: int) -> None:
    segments = name.split(".")
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise FilterError(
            f"bad field name {name[:40]!r} at column {position}: each dotted part needs at least one "
            "of A-Z a-z 0-9 _ -",
            position,
        )
    if name.lower() in KEYWORDS:
        raise FilterError(f"{name!r} at column {position} is a keyword; expected a field", position)
    if len(segments) > MAX_PATH_SEGMENTS or len(name) > MAX_PATH_LENGTH:
        raise FilterError(
            f"field {name[:40]!r} at column {position} is too long: at most {MAX_PATH_SEGMENTS} parts "
            f"and {MAX_PATH_LENGTH} characters",
            position,
        )
    if name == "tag":
        raise FilterError(f"tag at column {position} needs a key, e.g. tag.site", position)


def value_kind(value: Value) -> Literal["text", "number"]:
    if isinstance(value, bool):
        return "text"  # true and false are stored as the text "true" and "false"
    return "number" if isinstance(value, float) else "text"


def type_problem(comparison: Comparison) -> str | None:
    """Why this field, operator and value do not go together, or None."""
    kind = field_kind(comparison.field)
    operator = comparison.operator
    if isinstance(comparison.value, tuple) != (operator in ("in", "not in")):
        return f"{operator} takes {'a list' if operator in ('in', 'not in') else 'one value'}"
    values = comparison.value if isinstance(comparison.value, tuple) else (comparison.value,)
    strings_only = all(isinstance(value, str) for value in values)
    if kind == "group":
        if operator not in ("==", "!=", "in", "not in"):
            return f"group takes ==, !=, in or not in, not {operator}"
        return None if strings_only else "group compares with a group name in double quotes"
    if kind == "text":
        return None if strings_only else f"{comparison.field} compares with a string in double quotes"
    if kind == "datetime":
        if operator == "~":
            return f"{comparison.field} takes == != < <= > >= in or not in, not ~"
        if not all(isinstance(value, str) and parse_datetime(value) for value in values):
            return (
                f'{comparison.field} compares with an RFC 3339 date and time such as "2026-11-01T00:00:00Z"'
            )
        return None
    if len({value_kind(value) for value in values}) > 1:
        return "the list mixes numbers with strings: expected values of one kind"
    if operator == "~" and not strings_only:
        return "~ matches a string pattern in double quotes"
    if operator in _ORDERING and any(isinstance(value, bool) for value in values):
        return f"true and false take == or !=, not {operator}"
    return None


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})")


def parse_datetime(text: str) -> datetime | None:
    """An RFC 3339 date and time (with its offset, so always aware), or None."""
    if not _RFC3339.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:  # e.g. month 13
        return None

"""Syntax tree to a SQLAlchemy condition on `devices`; every value a bound parameter."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, String, and_, bindparam, exists, false, not_, or_, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import NullType

from fleetkeeper.devices.filters.language import (
    NULLABLE_FIELDS,
    And,
    Comparison,
    Expression,
    FilterError,
    Has,
    Not,
    Operator,
    Or,
    Value,
    check_field,
    field_kind,
    parse_datetime,
    type_problem,
    value_kind,
)
from fleetkeeper.devices.identity import is_mac, normalised_mac
from fleetkeeper.devices.models import Device, DeviceAttribute, DeviceGroup, GroupMember

# A device's MAC as a column and as the identity it claimed at enrollment.
MAC_FIELDS = frozenset({"mac", "identity.mac"})

_COLUMNS: dict[str, Any] = {
    "id": Device.id,
    "status": Device.status,
    "device_type": Device.device_type,
    "serial": Device.serial,
    "mac": Device.mac,
    "created_at": Device.created_at,
    "last_seen": Device.last_seen_at,
}


def to_sql(expression: Expression) -> ColumnElement[bool]:
    """The condition for an expression from `parse` (one built by hand is checked the same way)."""
    if isinstance(expression, And):
        return and_(*(to_sql(operand) for operand in expression.operands)) if expression.operands else true()
    if isinstance(expression, Or):
        return or_(*(to_sql(operand) for operand in expression.operands)) if expression.operands else false()
    if isinstance(expression, Not):
        return not_(to_sql(expression.operand))
    check_field(expression.field, expression.position)
    kind = field_kind(expression.field)
    if isinstance(expression, Has):
        return _has(expression)
    problem = type_problem(expression)
    if problem:
        raise FilterError(f"{problem} (column {expression.position})", expression.position)
    if kind == "group":
        return _group(expression)
    if kind == "attribute":
        return _attribute(expression)
    column = _COLUMNS[expression.field]
    value: Any = _stored_form(expression)
    if kind == "datetime":
        value = (
            tuple(parse_datetime(cast(str, item)) for item in value)
            if isinstance(value, tuple)
            else parse_datetime(cast(str, value))
        )
    condition = _compare(column, expression.operator, value)
    if expression.field in NULLABLE_FIELDS:
        return and_(column.is_not(None), condition)
    return condition


def _has(expression: Has) -> ColumnElement[bool]:
    kind = field_kind(expression.field)
    if kind == "attribute":
        return _attribute_exists(expression.field)
    if kind == "group":
        raise FilterError("has() takes an attribute or a column, not group", expression.position)
    if expression.field in NULLABLE_FIELDS:
        return cast(ColumnElement[bool], _COLUMNS[expression.field].is_not(None))
    return true()


def _attribute_exists(path: str, *conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return (
        exists()
        .where(DeviceAttribute.device_id == Device.id, DeviceAttribute.key == path, *conditions)
        .correlate(Device)
    )


def _stored_form(comparison: Comparison) -> Any:
    """A MAC compared for equality as it is stored (`identity.normalised_mac`): a filter written
    `mac == "AA-BB-CC-DD-EE-FF"` finds the device, as it did before MACs were normalised."""
    if comparison.field not in MAC_FIELDS or comparison.operator not in ("==", "!=", "in", "not in"):
        return comparison.value

    def stored(value: Value) -> Value:
        return normalised_mac(value) if isinstance(value, str) and is_mac(value) else value

    if isinstance(comparison.value, tuple):
        return tuple(stored(item) for item in comparison.value)
    return stored(comparison.value)


def _attribute(comparison: Comparison) -> ColumnElement[bool]:
    values = comparison.value if isinstance(comparison.value, tuple) else (comparison.value,)
    numeric = bool(values) and value_kind(values[0]) == "number"
    column = DeviceAttribute.value_num if numeric else DeviceAttribute.value_text
    value: Any = _stored_form(comparison)
    if not numeric:
        value = tuple(_as_text(item) for item in value) if isinstance(value, tuple) else _as_text(value)
    return _attribute_exists(comparison.field, _compare(column, comparison.operator, value))


def _as_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _group(comparison: Comparison) -> ColumnElement[bool]:
    """Membership of a static group; `!=` and `not in` mean "not a member"."""
    name_matches: ColumnElement[bool]
    if isinstance(comparison.value, tuple):
        name_matches = DeviceGroup.name.in_(comparison.value)
    else:
        name_matches = DeviceGroup.name == comparison.value
    member = (
        select(GroupMember.device_id)
        .join(DeviceGroup, DeviceGroup.id == GroupMember.group_id)
        .where(GroupMember.device_id == Device.id, DeviceGroup.kind == "static", name_matches)
        .correlate(Device)
        .exists()
    )
    return not_(member) if comparison.operator in ("!=", "not in") else member


def _compare(column: Any, operator: Operator, value: Any) -> ColumnElement[bool]:
    if operator == "in":
        return cast(ColumnElement[bool], column.in_(value))
    if operator == "not in":
        return cast(ColumnElement[bool], column.not_in(value))
    if operator == "~":
        return glob_match(
            column,
            bindparam(None, _like_pattern(value), String),
            bindparam(None, _sqlite_glob(value), String),
        )
    operations = {
        "==": column.__eq__,
        "!=": column.__ne__,
        "<": column.__lt__,
        "<=": column.__le__,
        ">": column.__gt__,
        ">=": column.__ge__,
    }
    return cast(ColumnElement[bool], operations[operator](value))


# --- glob matching ------------------------------------------------------------------------------
# SQLite's LIKE ignores ASCII case while PostgreSQL's does not; a filter must match the same devices
# on both, so SQLite matches with GLOB (case-sensitive) and PostgreSQL with LIKE. Each gets the
# pattern in its own syntax, as a bound parameter.

_LIKE_ESCAPE = "/"


def _like_pattern(glob: str) -> str:
    out = []
    for character in glob:
        if character == "*":
            out.append("%")
        elif character == "?":
            out.append("_")
        elif character in ("%", "_", _LIKE_ESCAPE):
            out.append(_LIKE_ESCAPE + character)
        else:
            out.append(character)
    return "".join(out)


def _sqlite_glob(glob: str) -> str:
    # In GLOB only *, ? and [ are special, and the filter's * and ? mean the same there; `[` is made
    # literal as the one-character class `[[]`.
    return glob.replace("[", "[[]")


class glob_match(FunctionElement[bool]):  # noqa: N801 - SQLAlchemy's naming for SQL constructs
    """glob_match(column, like_pattern, sqlite_glob_pattern): true when the column matches."""

    # Not Boolean: SQLite would then render `(x GLOB ?) = 1`, which its planner cannot index.
    type = cast(Any, NullType())
    name = "glob_match"
    inherit_cache = True


@compiles(glob_match)
def _glob_match_like(element: glob_match, compiler: SQLCompiler, **kw: Any) -> str:
    column, like, _glob = list(element.clauses)
    return f"({compiler.process(column, **kw)} LIKE {compiler.process(like, **kw)} ESCAPE '{_LIKE_ESCAPE}')"


@compiles(glob_match, "sqlite")
def _glob_match_sqlite(element: glob_match, compiler: SQLCompiler, **kw: Any) -> str:
    column, _like, glob = list(element.clauses)
    return f"({compiler.process(column, **kw)} GLOB {compiler.process(glob, **kw)})"

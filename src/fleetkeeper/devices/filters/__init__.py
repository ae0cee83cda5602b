"""The device filter language: `device_type == "rpi4" and os.version < "12" and tag.site == "plant-3"`.

A filter is parsed by an LALR grammar (lark, `parser.py`) into small frozen dataclasses
(`language.py`), then turned into a SQLAlchemy condition over the `devices` table (`sql.py`).
Attribute conditions are correlated EXISTS subqueries on `device_attributes`, so that its
(key, value_text) and (key, value_num) indexes serve them. Every value reaches the database as a
bound parameter; nothing from the filter is formatted into SQL. For operators: docs/filters.md.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement

from fleetkeeper.devices.filters.language import (
    MAX_COMPARISONS,
    MAX_LENGTH,
    MAX_LIST_ITEMS,
    MAX_NESTING,
    And,
    Comparison,
    Expression,
    FilterError,
    Has,
    Not,
    Operator,
    Or,
    Value,
    referenced_fields,
)
from fleetkeeper.devices.filters.parser import parse
from fleetkeeper.devices.filters.sql import to_sql

__all__ = [
    "MAX_COMPARISONS",
    "MAX_LENGTH",
    "MAX_LIST_ITEMS",
    "MAX_NESTING",
    "And",
    "Comparison",
    "Expression",
    "FilterError",
    "Has",
    "Not",
    "Operator",
    "Or",
    "Value",
    "compile_filter",
    "parse",
    "referenced_fields",
    "to_sql",
]


def compile_filter(expression: str) -> ColumnElement[bool]:
    """A condition on `devices`, for `select(Device).where(...)`; raises FilterError."""
    return to_sql(parse(expression))

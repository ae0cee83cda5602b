"""What the API takes on the wire: the base of every JSON request body, and the types of values
that bodies and query parameters spell as text.

A request body refuses unknown fields and takes values as the types the schema gives, never
converted (`true` is not the number 1, `"5"` is not 5). FastAPI validates a body after parsing the
JSON, so pydantic sees Python values: in strict mode a time would then have to be a `datetime`
object and an enumeration member an instance. The two types below take their JSON spelling (an
RFC 3339 string, the member's value) and nothing else; use them for such fields and parameters.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Strict

E = TypeVar("E", bound=Enum)

# RFC 3339's date-time, as the OpenAPI document's `format: date-time` means it: pydantic alone
# also takes "1700000000" (seconds since 1970), a space for the T, and times without seconds.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("Input should be an RFC 3339 time with its zone, e.g. 2026-12-07T10:00:00Z")
    return value


def _member_value(value: Any) -> Any:
    if not isinstance(value, str | Enum):
        raise ValueError("Input should be a string")
    return value


# An RFC 3339 time with its zone ("2026-12-07T10:00:00Z"); no number, no time without a zone.
Timestamp = Annotated[AwareDatetime, Strict(False), BeforeValidator(_rfc3339)]
# A member of a string enumeration, by its value.
Member = Annotated[E, Strict(False), BeforeValidator(_member_value)]


# --- responses read from rows --------------------------------------------------------------------

Response = TypeVar("Response", bound="RowModel")


class RowModel(BaseModel):
    """A response read from a database row's attributes of the same names: `Out.model_validate(row)`.
    A field the row holds under another shape is converted by a validator on the field."""

    # validate_by_name: a field read from a column of another name (validation_alias) still takes
    # its own name, as when a response is built from another's fields.
    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    @classmethod
    def from_row(cls: type[Response], row: object, **extra: Any) -> Response:
        """As model_validate(row), with `extra` for the fields the row does not hold."""
        return cls.model_validate(RowWith(row, extra))


class RowWith:
    """A row's attributes, with `extra` added in front (what a response holds beyond the row)."""

    __slots__ = ("_extra", "_row")

    def __init__(self, row: object, extra: dict[str, Any]) -> None:
        self._row = row
        self._extra = extra

    def __getattr__(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        return getattr(self._row, name)


def _is_set(value: Any) -> Any:
    return value if isinstance(value, bool) else value is not None


# A flag that says whether the row's column holds a value (a revocation time, a pending key):
# `flag: IsSet = Field(validation_alias="column")`.
IsSet = Annotated[bool, BeforeValidator(_is_set)]

"""The base of every JSON request body: unknown fields are refused, and values are taken as the
types the schema gives, never converted (`true` is not the number 1, `"5"` is not 5).

FastAPI validates a body after parsing the JSON, so pydantic sees Python values: in strict mode a
timestamp would then have to be a `datetime` object and an enumeration member an instance. The
two types below take their JSON spelling (an RFC 3339 string, the member's value) and nothing
else; use them for such fields of a request body.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Strict

E = TypeVar("E", bound=Enum)


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _spelled_as_text(value: Any) -> Any:
    if not isinstance(value, str | datetime | Enum):
        raise ValueError("Input should be a string")
    return value


# An RFC 3339 time with its zone ("2026-12-07T10:00:00Z"); no number, no time without a zone.
Timestamp = Annotated[AwareDatetime, Strict(False), BeforeValidator(_spelled_as_text)]
# A member of a string enumeration, by its value.
Member = Annotated[E, Strict(False), BeforeValidator(_spelled_as_text)]

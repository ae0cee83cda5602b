"""A request's id, HTTP and WebSocket alike: the caller's when well formed; set for the request
by `core/edge.py`, which also puts it on the response and on every log line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from starlette.types import Scope

REQUEST_ID_HEADER = "x-request-id"
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}\Z")
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


@contextmanager
def request_id_set(request_id: str) -> Iterator[None]:
    """`current_request_id()` inside: the request's, for the problems it gets."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's X-Request-ID when well formed (else a new one is made)."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            return candidate if _ACCEPTABLE_ID.match(candidate) else None
    return None

"""HTTP byte ranges (RFC 9110 §14) over the object store, so devices can resume interrupted downloads.

Only a single range is served. A header this module does not serve — another unit, several
ranges, or bad syntax — is ignored and the whole object is sent with 200, as RFC 9110 allows: a
device asking for several ranges still gets correct bytes, and a broken header never breaks a
download. A well-formed range that starts past the end is answered 416.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from starlette.responses import Response, StreamingResponse

from fleetkeeper.core.errors import problem_response
from fleetkeeper.core.objectstore import ObjectStore

_SINGLE_RANGE = re.compile(r"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE)


class ByteRange(NamedTuple):
    """Bytes `start` to `end`, both included, as in a Content-Range header."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiableError(Exception):
    """A well-formed range that selects no byte of an object of `size` bytes (416)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the range selects no byte of the {size}-byte object")
        self.size = size

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range `header` asks for within an object of `size` bytes, or None to send the whole
    object (no header, or one that is ignored, see the module docstring). An end past the object is
    cut to its last byte; raises RangeNotSatisfiableError when no byte is selected."""
    if not header:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None  # "5-3" is invalid syntax, not an unsatisfiable range
        if start >= size:
            raise RangeNotSatisfiableError(size)
        return ByteRange(start, min(end, size - 1))
    if not last:
        return None  # "bytes=-"
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiableError(size)
    return ByteRange(max(size - suffix, 0), size - 1)


async def range_response(store: ObjectStore, key: str, range_header: str | None, media_type: str) -> Response:
    """The object streamed from the store: 200 whole, 206 one range, 416 or 404 as problem+json."""
    size = await store.size(key)
    if size is None:
        return problem_response(404, "not_found", "no such object")
    try:
        selected = parse_range(range_header, size)
    except RangeNotSatisfiableError as exc:
        return problem_response(
            416,
            "range_not_satisfiable",
            str(exc),
            headers={"Content-Range": exc.content_range, "Accept-Ranges": "bytes"},
        )
    if selected is None:
        return StreamingResponse(
            store.open(key),
            status_code=200,
            media_type=media_type,
            headers={"Content-Length": str(size), "Accept-Ranges": "bytes"},
        )
    return StreamingResponse(
        store.open(key, selected.start, selected.end + 1),
        status_code=206,
        media_type=media_type,
        headers={
            "Content-Length": str(selected.length),
            "Content-Range": f"bytes {selected.start}-{selected.end}/{size}",
            "Accept-Ranges": "bytes",
        },
    )

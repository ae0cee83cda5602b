"""HTTP Range parsing, and range_response served through a small app from each store backend."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import httpx2
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from fleetkeeper.core.objectstore import ObjectStore, S3Store
from fleetkeeper.releases.ranges import ByteRange, RangeNotSatisfiableError, parse_range, range_response
from tests.conftest import chunked


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 100, ByteRange(0, 0)),
        ("bytes=0-99", 100, ByteRange(0, 99)),
        ("bytes=10-19", 100, ByteRange(10, 19)),
        ("bytes=10-", 100, ByteRange(10, 99)),
        ("bytes=99-", 100, ByteRange(99, 99)),
        ("bytes=-1", 100, ByteRange(99, 99)),
        ("bytes=-30", 100, ByteRange(70, 99)),
        ("bytes=-500", 100, ByteRange(0, 99)),  # a suffix longer than the object: all of it
        ("bytes=90-500", 100, ByteRange(90, 99)),  # an end past the object is cut to its last byte
        ("Bytes = 5 - 6 ", 100, ByteRange(5, 6)),
    ],
)
def test_satisfiable_ranges(header: str, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes=",
        "bytes=-",
        "bytes=5-3",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes 0-10",
        "items=0-10",
        "bytes=0-10,20-30",  # several ranges: the whole object instead
        "bytes=0x10-20",
        "bytes=٣-٤",  # digits, but not ASCII ones
    ],
)
def test_headers_that_send_the_whole_object(header: str | None) -> None:
    assert parse_range(header, 100) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-5", 0)],
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError) as raised:
        parse_range(header, size)
    assert raised.value.content_range == f"bytes */{size}"


# --- through an app ---------------------------------------------------------------------------

DATA = os.urandom(3 * 1024 * 1024 + 7)


def make_app(store: ObjectStore) -> FastAPI:
    app = FastAPI()

    @app.get("/objects/{key:path}")
    async def download(key: str, request: Request) -> Response:
        return await range_response(store, key, request.headers.get("range"), "application/octet-stream")

    return app


@pytest.fixture
async def client(object_store: ObjectStore) -> AsyncIterator[httpx2.AsyncClient]:
    await object_store.put("t/blob", chunked(DATA), length=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
    transport = httpx2.ASGITransport(app=make_app(object_store))
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_whole_object(client: httpx2.AsyncClient) -> None:
    response = await client.get("/objects/t/blob")
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=1000-2999999", 1000, 2999999),
        ("bytes=-10", len(DATA) - 10, len(DATA) - 1),
    ],
)
async def test_partial_content(
    client: httpx2.AsyncClient,
    object_store: ObjectStore,
    header: str,
    start: int,
    end: int,
    request: pytest.FixtureRequest,
) -> None:
    if isinstance(object_store, S3Store) and header == "bytes=0-0":
        # See test_storage.test_byte_ranges: s3rver sends the whole object for bytes=0-0.
        request.applymarker(pytest.mark.xfail(strict=True, reason="s3rver 3.7.1 mishandles bytes=0-0"))
    response = await client.get("/objects/t/blob", headers={"range": header})
    assert response.status_code == 206
    assert response.content == DATA[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["accept-ranges"] == "bytes"


async def test_several_ranges_get_the_whole_object(client: httpx2.AsyncClient) -> None:
    response = await client.get("/objects/t/blob", headers={"range": "bytes=0-1,5-6"})
    assert response.status_code == 200
    assert response.content == DATA


async def test_unsatisfiable_range(client: httpx2.AsyncClient) -> None:
    response = await client.get("/objects/t/blob", headers={"range": f"bytes={len(DATA)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "range_not_satisfiable"


async def test_missing_object(client: httpx2.AsyncClient) -> None:
    response = await client.get("/objects/t/none", headers={"range": "bytes=0-5"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


async def test_the_response_streams(object_store: ObjectStore) -> None:
    await object_store.put("big", chunked(DATA), length=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
    response = await range_response(object_store, "big", None, "application/octet-stream")
    assert isinstance(response, StreamingResponse)
    chunks = [chunk async for chunk in response.body_iterator]
    assert len(chunks) > 1
    assert b"".join(bytes(chunk) for chunk in chunks) == DATA

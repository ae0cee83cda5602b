"""One suite for every object-store backend: the filesystem and a real S3 server (s3rver)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from fleetkeeper.core.config import load_settings
from fleetkeeper.core.objectstore import (
    FilesystemStore,
    ObjectMismatchError,
    ObjectNotFoundError,
    ObjectStore,
    S3Store,
    object_store_from_settings,
    validate_key,
)
from tests.conftest import S3Server, chunked, stored_names

# Bigger than obstore's multipart part size (8 MiB here), so S3 puts go through a multipart upload.
PAYLOAD = os.urandom(9 * 1024 * 1024 + 12345)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


async def read_all(store: ObjectStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.open(key, start, end)])


async def put_bytes(store: ObjectStore, key: str, data: bytes) -> None:
    await store.put(key, chunked(data), length=len(data), sha256=hashlib.sha256(data).hexdigest())


async def test_round_trip_of_a_multi_mebibyte_object_streamed_in_chunks(object_store: ObjectStore) -> None:
    key = f"targets/{PAYLOAD_SHA256}.rootfs.img"
    await object_store.put(key, chunked(PAYLOAD), length=len(PAYLOAD), sha256=PAYLOAD_SHA256)

    chunks = [chunk async for chunk in object_store.open(key)]
    assert b"".join(chunks) == PAYLOAD
    assert len(chunks) > 1, "the object is streamed, not read whole"
    assert max(len(chunk) for chunk in chunks) <= 16 * 1024 * 1024
    assert await object_store.size(key) == len(PAYLOAD)
    assert await stored_names(object_store) == [key]


async def test_put_replaces_an_existing_object(object_store: ObjectStore) -> None:
    await put_bytes(object_store, "a/b", b"first")
    await put_bytes(object_store, "a/b", b"second, longer")
    assert await read_all(object_store, "a/b") == b"second, longer"


async def test_an_empty_object(object_store: ObjectStore) -> None:
    await put_bytes(object_store, "empty", b"")
    assert await object_store.size("empty") == 0
    assert await read_all(object_store, "empty") == b""


@pytest.mark.parametrize(
    ("declared_length", "declared_sha256", "field"),
    [
        (len(PAYLOAD) + 1, PAYLOAD_SHA256, "length"),  # the stream ends early
        (len(PAYLOAD) - 1, PAYLOAD_SHA256, "length"),  # the stream goes on too long
        (1000, PAYLOAD_SHA256, "length"),  # refused long before the end
        (len(PAYLOAD), hashlib.sha256(b"something else").hexdigest(), "sha256"),
    ],
    ids=["ends early", "goes on", "far too long", "other content"],
)
async def test_a_mismatch_leaves_nothing_behind(
    object_store: ObjectStore, declared_length: int, declared_sha256: str, field: str
) -> None:
    with pytest.raises(ObjectMismatchError) as raised:
        await object_store.put(
            "targets/x.img", chunked(PAYLOAD), length=declared_length, sha256=declared_sha256
        )

    assert raised.value.field == field
    assert not await object_store.exists("targets/x.img")
    assert await stored_names(object_store) == []


async def test_a_mismatch_keeps_the_object_already_there(object_store: ObjectStore) -> None:
    await put_bytes(object_store, "kept", b"original")
    with pytest.raises(ObjectMismatchError):
        await object_store.put(
            "kept", chunked(b"altered!"), length=8, sha256=hashlib.sha256(b"x").hexdigest()
        )
    assert await read_all(object_store, "kept") == b"original"
    assert await stored_names(object_store) == ["kept"]


async def test_a_failing_stream_leaves_nothing_behind(object_store: ObjectStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield PAYLOAD[:1000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await object_store.put("x", broken(), length=len(PAYLOAD), sha256=PAYLOAD_SHA256)
    assert await stored_names(object_store) == []


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 1, PAYLOAD[:1]),  # the first byte
        (0, 2, PAYLOAD[:2]),
        (4_000_000, 4_000_100, PAYLOAD[4_000_000:4_000_100]),  # the middle
        (len(PAYLOAD) - 500, None, PAYLOAD[-500:]),  # a suffix
        (1234, None, PAYLOAD[1234:]),  # to the end
        (len(PAYLOAD) - 1, len(PAYLOAD), PAYLOAD[-1:]),  # the last byte
        (10, 10, b""),
        (len(PAYLOAD) - 10, len(PAYLOAD) + 1000, PAYLOAD[-10:]),
        (len(PAYLOAD), None, b""),
        (len(PAYLOAD) + 5, len(PAYLOAD) + 10, b""),
    ],
    ids=[
        "first-byte",
        "first-two",
        "middle",
        "suffix",
        "to-the-end",
        "last-byte",
        "empty",
        "clipped",
        "at-the-end",
        "past-the-end",
    ],
)
async def test_byte_ranges(
    object_store: ObjectStore, start: int, end: int | None, expected: bytes, request: pytest.FixtureRequest
) -> None:
    if isinstance(object_store, S3Store) and (start, end) == (0, 1):
        # s3rver reads the 0 of "Range: bytes=0-0" as "no end" and sends the whole object, which obstore
        # rightly refuses; real S3 answers with the one byte. Strict, so a fixed s3rver is noticed.
        request.applymarker(pytest.mark.xfail(strict=True, reason="s3rver 3.7.1 mishandles bytes=0-0"))
    await object_store.put("r", chunked(PAYLOAD), length=len(PAYLOAD), sha256=PAYLOAD_SHA256)
    assert await read_all(object_store, "r", start, end) == expected


async def test_invalid_ranges_are_refused(object_store: ObjectStore) -> None:
    await put_bytes(object_store, "r", b"0123456789")
    with pytest.raises(ValueError, match="invalid byte range"):
        await read_all(object_store, "r", 5, 4)
    with pytest.raises(ValueError, match="invalid byte range"):
        await read_all(object_store, "r", -1)


async def test_size_exists_and_delete(object_store: ObjectStore) -> None:
    assert await object_store.size("a/b.bin") is None
    assert not await object_store.exists("a/b.bin")

    await put_bytes(object_store, "a/b.bin", b"hello")
    assert await object_store.size("a/b.bin") == 5
    assert await object_store.exists("a/b.bin")
    assert not await object_store.exists("a"), "a key's parent is not an object"

    await object_store.delete("a/b.bin")
    assert not await object_store.exists("a/b.bin")
    await object_store.delete("a/b.bin")  # idempotent
    await object_store.delete("never/was")
    with pytest.raises(ObjectNotFoundError):
        await read_all(object_store, "a/b.bin")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "a/../../b",
        "a/./b",
        "a//b",
        "a/",
        "..",
        "with space",
        "back\\slash",
        "tilde~",
        "percent%2e",
        "naïve",
        "nul\x00",
        "x" * 501,
    ],
)
async def test_invalid_keys_are_refused(object_store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="object key"):
        validate_key(key)
    with pytest.raises(ValueError, match="object key"):
        await put_bytes(object_store, key, b"x")
    with pytest.raises(ValueError, match="object key"):
        await read_all(object_store, key)
    for call in (object_store.size, object_store.exists, object_store.delete):
        with pytest.raises(ValueError, match="object key"):
            await call(key)
    with pytest.raises(ValueError, match="object key"):
        await object_store.presigned_url(key, 60)
    with pytest.raises(ValueError, match="object key"):
        object_store.local_path(key)
    assert await stored_names(object_store) == []


def test_valid_keys() -> None:
    for key in ["a", "targets/0f.rootfs-v1.2+build_3.img", "x" * 500, "a.b/c..d/.e"]:
        assert validate_key(key) == key


async def test_presigned_url_downloads_then_expires(object_store: ObjectStore) -> None:
    await put_bytes(object_store, "dl/file.bin", b"payload bytes")
    url = await object_store.presigned_url("dl/file.bin", 60)
    short_lived = await object_store.presigned_url("dl/file.bin", 1)
    if isinstance(object_store, FilesystemStore):
        assert url is None
        assert object_store.local_path("dl/file.bin") == object_store.root / "dl" / "file.bin"
        return
    assert url is not None
    assert object_store.local_path("dl/file.bin") is None
    async with httpx2.AsyncClient() as client:
        fetched = await client.get(url)
        assert fetched.status_code == 200
        assert fetched.content == b"payload bytes"
        # Signatures carry whole seconds: past 2 s a 1 s link has certainly expired (and a 1 s link
        # may expire before its first use, hence the 60 s one above). s3rver checks the expiry and
        # the access key of a V4 presigned URL, but not the signature itself.
        assert short_lived is not None
        await asyncio.sleep(2.1)
        expired = await client.get(short_lived)
        assert expired.status_code == 403
        assert "expired" in expired.text


async def test_concurrent_puts_of_different_keys(object_store: ObjectStore) -> None:
    payloads = {f"many/{index}.bin": os.urandom(300_000 + index) for index in range(8)}
    await asyncio.gather(*(put_bytes(object_store, key, data) for key, data in payloads.items()))
    for key, data in payloads.items():
        assert await read_all(object_store, key) == data
    assert await stored_names(object_store) == sorted(payloads)


def test_factory_defaults_to_the_data_directory(tmp_path: Path) -> None:
    store = object_store_from_settings(load_settings(data_dir=tmp_path))
    assert isinstance(store, FilesystemStore)
    assert store.root == tmp_path / "objects"


def test_factory_takes_a_directory(tmp_path: Path) -> None:
    store = object_store_from_settings(load_settings(data_dir=tmp_path, object_store_url=str(tmp_path / "o")))
    assert isinstance(store, FilesystemStore)
    assert store.root == tmp_path / "o"


async def test_factory_makes_a_working_s3_store(s3_server: S3Server, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        object_store_url=f"s3://{s3_server.bucket}/from/settings/",
        s3_endpoint=s3_server.endpoint,
        s3_region=s3_server.region,
        s3_access_key_id=s3_server.access_key_id,
        s3_secret_access_key=s3_server.secret_access_key,
        s3_allow_http=True,
    )
    store = object_store_from_settings(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (s3_server.bucket, "from/settings")
    await put_bytes(store, "k", b"v")
    assert await s3_server.store().size("from/settings/k") == 1


def test_factory_refuses_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported scheme"):
        object_store_from_settings(load_settings(data_dir=tmp_path, object_store_url="gs://bucket"))
    with pytest.raises(ValueError, match="s3://bucket"):
        S3Store.from_url("s3:///prefix-only")

"""Object storage for release payloads: a directory by default, any S3-compatible service at scale.

Every backend makes an object visible only once its length and SHA-256 are what the caller
declared, so a half-written or altered payload can never be served: writes go to a temporary name
first and are moved into place after the check. Byte ranges given to `open` are half-open,
`[start, end)`, as in Python slices; HTTP's inclusive ranges are converted in `ranges.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import stat
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import GenericError
from obstore.exceptions import NotFoundError as _ObstoreNotFound
from obstore.store import S3Store as _ObstoreS3Store

from fleetkeeper.core.config import Settings

if TYPE_CHECKING:
    from obstore import OffsetRange

CHUNK_SIZE = 1024 * 1024
MAX_KEY_LENGTH = 500
_KEY_CHARACTERS = re.compile(r"[A-Za-z0-9._/+-]+")
# Temporary objects live under a name that no valid key can have ("~" is outside the key
# alphabet), so they never collide with or show up as a real object.
PARTIAL_PREFIX = "~partial"


class ObjectNotFoundError(FileNotFoundError):
    """No object under this key."""


class ObjectMismatchError(ValueError):
    """The bytes written are not what the caller declared; nothing was stored.

    `field` is "length" or "sha256", so callers can map it to a stable problem code."""

    def __init__(self, field: str, expected: str | int, actual: str | int) -> None:
        super().__init__(f"{field} mismatch: declared {expected}, received {actual}")
        self.field = field
        self.expected = expected
        self.actual = actual


def validate_key(key: str) -> str:
    """Returns `key` if it is a safe relative name: `[A-Za-z0-9._/+-]`, at most 500 characters, no
    leading "/", and no empty, "." or ".." segment. Raises ValueError otherwise."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key must have 1 to {MAX_KEY_LENGTH} characters")
    if not _KEY_CHARACTERS.fullmatch(key):
        raise ValueError("object key may only contain A-Z a-z 0-9 . _ / + -")
    if key.startswith("/"):
        raise ValueError("object key must not start with /")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ValueError("object key must not have empty, '.' or '..' segments")
    return key


@runtime_checkable
class ObjectStore(Protocol):
    """Where release payloads are kept. Keys are checked with `validate_key` (ValueError)."""

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, length: int, sha256: str) -> None:
        """Stores the streamed bytes under `key`, replacing any object there, only if exactly `length`
        bytes with this hex SHA-256 arrive; otherwise raises ObjectMismatchError and stores nothing."""
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Streams bytes `[start, end)` of the object (end exclusive; None: to the end), clipped to the
        object: a range past its end yields nothing. Raises ObjectNotFoundError (on first iteration)
        if there is no such object, ValueError if start < 0 or end < start."""
        ...

    async def size(self, key: str) -> int | None:
        """The object's length in bytes, or None if there is no such object."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Removes the object; nothing happens if there is none."""
        ...

    async def presigned_url(self, key: str, seconds: int) -> str | None:
        """A URL that downloads the object without credentials for `seconds`; None if the backend
        cannot make one (the filesystem)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Where the object's file is (whether or not it exists), for zero-copy sending; None if
        objects are not local files."""
        ...


class _Verifier:
    """Counts and hashes bytes as they pass, failing early once more than the declared length arrives."""

    def __init__(self, length: int, sha256: str) -> None:
        if length < 0:
            raise ValueError("length must not be negative")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise ValueError("sha256 must be 64 hexadecimal digits")
        self.length = length
        self.sha256 = sha256.lower()
        self.received = 0
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.length:
            raise ObjectMismatchError("length", self.length, f"more than {self.length}")
        self._hash.update(chunk)

    def finish(self) -> None:
        if self.received != self.length:
            raise ObjectMismatchError("length", self.length, self.received)
        actual = self._hash.hexdigest()
        if actual != self.sha256:
            raise ObjectMismatchError("sha256", self.sha256, actual)


# --- the filesystem ---------------------------------------------------------------------------


class FilesystemStore:
    """Objects as files under `root`; file I/O runs in worker threads, a chunk at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, length: int, sha256: str) -> None:
        target = self._path(key)
        verifier = _Verifier(length, sha256)
        partial_dir = self.root / PARTIAL_PREFIX
        await asyncio.to_thread(partial_dir.mkdir, parents=True, exist_ok=True)
        # Same filesystem as the target, so the final rename is atomic.
        temporary = partial_dir / secrets.token_hex(16)
        handle = await asyncio.to_thread(temporary.open, "xb")
        try:
            try:
                async for chunk in chunks:
                    verifier.update(chunk)
                    await asyncio.to_thread(handle.write, chunk)
                verifier.finish()
                await asyncio.to_thread(_flush_and_sync, handle)
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(_move_into_place, temporary, target)
        except BaseException:
            await asyncio.to_thread(temporary.unlink, missing_ok=True)
            raise

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(key)
        _check_range(start, end)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(key) from None
        try:
            await asyncio.to_thread(handle.seek, start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                wanted = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
                chunk = await asyncio.to_thread(handle.read, wanted)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            status = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return status.st_size if stat.S_ISREG(status.st_mode) else None

    async def exists(self, key: str) -> bool:
        return await self.size(key) is not None

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(NotADirectoryError, IsADirectoryError):
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def presigned_url(self, key: str, seconds: int) -> str | None:
        validate_key(key)
        return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def _flush_and_sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _move_into_place(temporary: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary.replace(target)
    # The rename itself is durable only once the directory that holds the new entry is synced.
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range [{start}, {end})")


# --- S3-compatible services -------------------------------------------------------------------


class S3Store:
    """Objects in an S3 bucket under an optional prefix, through obstore's async calls.

    A put uploads to `<prefix>/~partial/<random>` (obstore streams it as a multipart upload when
    large), and only after the length and hash check copies it to the key and deletes the temporary
    object. A crash between the two can leave a temporary object behind; a bucket lifecycle rule on
    the `~partial/` prefix removes those. The copy is one CopyObject request, which S3 allows up to
    5 GiB."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        allow_http: bool = False,
    ) -> None:
        self.bucket = bucket
        # The prefix is applied here rather than by obstore so that signed URLs, listings and error
        # messages all name the same full key.
        self.prefix = prefix.strip("/")
        config: dict[str, str | bool] = {"region": region, "virtual_hosted_style_request": False}
        if endpoint:
            config["endpoint"] = endpoint
        if access_key_id is not None:
            config["access_key_id"] = access_key_id
        if secret_access_key is not None:
            config["secret_access_key"] = secret_access_key
        self.store = _ObstoreS3Store(
            bucket,
            config=config,  # type: ignore[arg-type]
            client_options={"allow_http": allow_http},
        )

    @classmethod
    def from_url(cls, url: str, **options: object) -> S3Store:
        """`s3://bucket` or `s3://bucket/prefix`."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        return cls(parts.netloc, parts.path, **options)  # type: ignore[arg-type]

    def full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _partial_key(self) -> str:
        name = f"{PARTIAL_PREFIX}/{secrets.token_hex(16)}"
        return f"{self.prefix}/{name}" if self.prefix else name

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, length: int, sha256: str) -> None:
        target = self.full_key(key)
        verifier = _Verifier(length, sha256)
        temporary = self._partial_key()

        # obstore reports the failure of its multipart abort rather than why it aborted, so the
        # reason (a mismatch, or the caller's stream failing) is kept here and raised instead.
        stream_error: BaseException | None = None

        async def verified() -> AsyncIterator[bytes]:
            nonlocal stream_error
            try:
                async for chunk in chunks:
                    verifier.update(chunk)
                    yield chunk
                # Raising here, before the stream ends, makes obstore abort the upload instead of
                # completing it.
                verifier.finish()
            except BaseException as exc:
                stream_error = exc
                raise

        try:
            # obstore holds up to chunk_size × max_concurrency in memory per upload: 32 MiB here.
            await obstore.put_async(
                self.store, temporary, verified(), chunk_size=8 * CHUNK_SIZE, max_concurrency=4
            )
            # obstore may stop reading once it has what it needs; our own count decides.
            verifier.finish()
            await obstore.copy_async(self.store, temporary, target)
        except BaseException as exc:
            await _delete_quietly(self.store, temporary)
            if stream_error is not None and stream_error is not exc:
                raise stream_error from None
            raise
        await _delete_quietly(self.store, temporary)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.full_key(key)
        _check_range(start, end)
        if end is not None and end == start:
            # An empty range is not expressible as an HTTP Range; still say whether the object exists.
            if await self.size(key) is None:
                raise ObjectNotFoundError(key)
            return
        byte_range: tuple[int, int] | OffsetRange | None
        if end is not None:
            byte_range = (start, end)
        elif start:
            byte_range = {"offset": start}
        else:
            byte_range = None
        try:
            result = await obstore.get_async(
                self.store, path, options={"range": byte_range} if byte_range is not None else None
            )
        except (_ObstoreNotFound, FileNotFoundError):
            raise ObjectNotFoundError(key) from None
        except GenericError:
            # A range starting past the end is refused by S3 (416); the filesystem reads nothing
            # there, and both backends should agree. Looked up only on this rare path.
            size = await self.size(key)
            if size is None:
                raise ObjectNotFoundError(key) from None
            if start >= size:
                return
            raise
        async for chunk in result.stream(min_chunk_size=CHUNK_SIZE):
            yield bytes(chunk)

    async def size(self, key: str) -> int | None:
        try:
            meta = await obstore.head_async(self.store, self.full_key(key))
        except (_ObstoreNotFound, FileNotFoundError):
            return None
        return meta["size"]

    async def exists(self, key: str) -> bool:
        return await self.size(key) is not None

    async def delete(self, key: str) -> None:
        await _delete_quietly(self.store, self.full_key(key))

    async def presigned_url(self, key: str, seconds: int) -> str | None:
        return await obstore.sign_async(self.store, "GET", self.full_key(key), timedelta(seconds=seconds))

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None


async def _delete_quietly(store: _ObstoreS3Store, path: str) -> None:
    with contextlib.suppress(_ObstoreNotFound, FileNotFoundError):
        await obstore.delete_async(store, path)


def object_store_from_settings(settings: Settings) -> ObjectStore:
    """`object_store_url` s3://bucket/prefix: S3 with the s3_* settings; a directory: the filesystem;
    unset: `data_dir/objects`."""
    url = settings.object_store_url
    if not url:
        return FilesystemStore(settings.data_dir / "objects")
    if url.startswith("s3://"):
        secret = settings.s3_secret_access_key
        return S3Store.from_url(
            url,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            allow_http=settings.s3_allow_http,
        )
    if "://" in url:
        raise ValueError(f"object_store_url: unsupported scheme in {url!r} (use s3:// or a directory)")
    return FilesystemStore(Path(url))

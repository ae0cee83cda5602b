"""Fixtures of the release tests: offline keys and trust (key generation is the slow part), and a
real S3-compatible server (s3rver on node) with one object store per backend."""

from __future__ import annotations

import os
import secrets
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import obstore
import pytest
from securesystemslib.signer import CryptoSigner, Key

from fleetkeeper.releases.keys import init_keys
from fleetkeeper.releases.storage import FilesystemStore, ObjectStore, S3Store
from fleetkeeper.releases.trust import ONLINE_KEY_NAMES, InitialTrust, build_initial_trust
from tests.helpers.releases import in_days

NOW = datetime.now(UTC)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys") / "release-keys"
    init_keys(directory, threshold=1, count=1)
    return directory


@pytest.fixture(scope="session")
def two_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys2") / "release-keys"
    init_keys(directory, threshold=2, count=2)
    return directory


@pytest.fixture(scope="session")
def online_keys() -> dict[str, Key]:
    return {name: CryptoSigner.generate_ed25519().public_key for name in ONLINE_KEY_NAMES}


@pytest.fixture(scope="session")
def trust(keys_dir: Path, online_keys: dict[str, Key]) -> InitialTrust:
    return build_initial_trust(keys_dir, online_keys, in_days(365))


@pytest.fixture(scope="session")
def trust2(two_keys_dir: Path, online_keys: dict[str, Key]) -> InitialTrust:
    return build_initial_trust(two_keys_dir, online_keys, in_days(365))


def engineer_copy(keys_dir: Path, destination: Path, keep: str) -> Path:
    """A copy of `keys_dir` holding only one targets private key, as one engineer's machine would."""
    shutil.copytree(keys_dir, destination)
    for key_file in destination.glob("targets-*.key"):
        if key_file.name != keep:
            key_file.unlink()
    return destination


S3_SERVER_DIR = Path(__file__).resolve().parents[1] / "s3_server"
STORE_BACKENDS = ["filesystem", "s3"]


@dataclass(frozen=True)
class S3Server:
    """A running s3rver: it accepts these fixed credentials and has `bucket` already."""

    endpoint: str
    bucket: str
    region: str = "us-east-1"
    access_key_id: str = "S3RVER"
    secret_access_key: str = "S3RVER"

    def store(self, prefix: str = "") -> S3Store:
        return S3Store(
            self.bucket,
            prefix,
            endpoint=self.endpoint,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            allow_http=True,
        )


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One s3rver for the session, on a port it picks on loopback, storing into a temporary directory."""
    if not (S3_SERVER_DIR / "node_modules" / "s3rver").is_dir():
        pytest.fail(f"run `npm install --no-package-lock` in {S3_SERVER_DIR} (make test does)")
    bucket = "fleetkeeper-test"
    with tempfile.TemporaryDirectory(prefix="s3rver-") as workdir, (Path(workdir) / "log").open("wb") as log:
        data = Path(workdir) / "data"
        data.mkdir()
        # stdin stays open only so that node exits if the test run dies without stopping it.
        process = subprocess.Popen(
            ["node", "server.mjs", str(data), bucket],
            cwd=S3_SERVER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            line = _read_line(process, 30)
            if not line.startswith("READY "):
                raise RuntimeError(f"s3rver did not start: {line!r}\n{(Path(workdir) / 'log').read_text()}")
            yield S3Server(endpoint=line.removeprefix("READY ").strip(), bucket=bucket)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def object_store(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> ObjectStore:
    """An empty store: a directory in tmp, or a fresh prefix in the session's S3 bucket."""
    if store_backend == "filesystem":
        return FilesystemStore(tmp_path / "objects")
    server: S3Server = request.getfixturevalue("s3_server")
    return server.store(f"test-{secrets.token_hex(6)}")


async def stored_names(store: ObjectStore) -> list[str]:
    """Every name the backend holds for this store, temporary ones included, relative to its root."""
    if isinstance(store, FilesystemStore):
        if not store.root.exists():
            return []
        return sorted(str(path.relative_to(store.root)) for path in store.root.rglob("*") if path.is_file())
    assert isinstance(store, S3Store)
    listed = await obstore.list(store.store, prefix=store.prefix or None).collect_async()
    return sorted(item["path"].removeprefix(f"{store.prefix}/") for item in listed)


async def chunked(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]

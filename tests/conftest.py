"""Fixtures every domain reuses: databases on SQLite and PostgreSQL, a running server, device
certificates, object stores."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import obstore
import pytest
from cryptography import x509
from sqlalchemy import text

from fleetkeeper.core.config import load_settings
from fleetkeeper.core.db import Base, Database
from fleetkeeper.core.migrations import upgrade_async
from fleetkeeper.core.objectstore import FilesystemStore, ObjectStore, S3Store
from fleetkeeper.core.pki import (
    CertificateAuthority,
    PkiPaths,
    generate_private_key,
    load_ca,
    write_certificate,
    write_private_key,
)
from fleetkeeper.models import load_all_models
from fleetkeeper.server.app import create_management_app
from fleetkeeper.server.runtime import Runtime
from fleetkeeper.server.serve import BANNER_END

POSTGRES_URL = os.environ.get(
    "FLEETKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]


# --- databases --------------------------------------------------------------------------------


class PostgresServer:
    """Makes fresh databases on the PostgreSQL server the suite runs against, and drops them after."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    async def create_database(self, template: str | None = None) -> str:
        name = f"fk_test_{secrets.token_hex(6)}"
        connection = await asyncpg.connect(self.admin_url)
        try:
            copy_of = f' TEMPLATE "{template}"' if template else ""
            await connection.execute(f'CREATE DATABASE "{name}"{copy_of}')
        finally:
            await connection.close()
        self.created.append(name)
        base = self.admin_url.rsplit("/", 1)[0]
        return f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"

    async def drop_all(self) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            for name in self.created:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


@pytest.fixture(scope="session")
async def postgres() -> AsyncIterator[PostgresServer]:
    try:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await connection.close()
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}); the suite runs on it as well as "
            "SQLite. Start it, or point FLEETKEEPER_TEST_POSTGRES_URL at one."
        )
    server = PostgresServer(POSTGRES_URL)
    yield server
    await server.drop_all()


FreshDatabaseUrl = Callable[[str], Awaitable[str]]


@pytest.fixture
def fresh_database_url(postgres: PostgresServer, tmp_path: Path) -> FreshDatabaseUrl:
    """An empty database (no tables) on the backend asked for."""

    async def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite+aiosqlite:///{tmp_path / f'{secrets.token_hex(4)}.db'}"
        return await postgres.create_database()

    return make


@pytest.fixture(scope="session", params=BACKENDS)
async def migrated_database(
    request: pytest.FixtureRequest, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    """One database per backend per test session, migrated to head."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'fleetkeeper.db'}"
    else:
        url = await postgres.create_database()
    await upgrade_async(url)
    database = Database(url)
    yield database
    await database.dispose()


@pytest.fixture
async def database(migrated_database: Database) -> AsyncIterator[Database]:
    """The session's migrated database, emptied after each test."""
    yield migrated_database
    load_all_models()
    async with migrated_database.transaction() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(text(f'DELETE FROM "{table.name}"'))  # noqa: S608


# --- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCertificate:
    cert: Path
    key: Path


@dataclass
class CertificateFactory:
    """Issues client certificates from a CA's files, as a device would hold them."""

    ca_dir: Path
    out_dir: Path
    _other_ca: CertificateAuthority | None = field(default=None, init=False)

    def _ca(self) -> CertificateAuthority:
        paths = PkiPaths(self.ca_dir)
        return load_ca(paths)

    def issue(
        self,
        common_name: str,
        *,
        validity: timedelta = timedelta(days=30),
        not_before: datetime | None = None,
        other_ca: bool = False,
    ) -> ClientCertificate:
        if other_ca:
            self._other_ca = self._other_ca or CertificateAuthority.create("some other CA")
        ca = self._other_ca if other_ca else self._ca()
        assert ca is not None
        key = generate_private_key()
        certificate = ca.issue(
            key.public_key(), common_name, client=True, validity=validity, not_before=not_before
        )
        stem = self.out_dir / f"{common_name}-{secrets.token_hex(3)}"
        result = ClientCertificate(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        write_certificate(result.cert, certificate)
        write_private_key(result.key, key)
        return result

    def expired(self, common_name: str) -> ClientCertificate:
        return self.issue(
            common_name, not_before=datetime.now(UTC) - timedelta(days=10), validity=timedelta(days=1)
        )


# --- a running server -------------------------------------------------------------------------

_BANNER_URL = re.compile(r"^\s+(management|devices):\s+(\S+)")
_BANNER_PASSWORD = re.compile(r"one-time password:\s+(\S+)")


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    data_dir: Path
    management_url: str
    device_url: str
    banner: str
    admin_password: str | None

    @property
    def ca_cert(self) -> Path:
        return self.data_dir / "pki" / "ca.crt"

    def certificates(self, out_dir: Path) -> CertificateFactory:
        return CertificateFactory(self.data_dir / "pki", out_dir)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def fleetkeeper_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetkeeper", *args]


def run_fleetkeeper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the CLI as a user would, with no FLEETKEEPER_* settings but those given."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("FLEETKEEPER_")}
    return subprocess.run(
        fleetkeeper_command(*args), capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60
    )


async def run_fleetkeeper_async(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_fleetkeeper, *args, env=env)


def start_server(
    data_dir: Path,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    port: int = 0,
) -> RunningServer:
    """Starts `fleetkeeper serve` on free ports (or the management `port` given: an OpenID provider
    must know the callback address first) and reads the URLs (and any password) from its banner."""
    args = [
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--device-port",
        "0",
        "--device-host",
        "127.0.0.1",
    ]
    if database_url:
        args += ["--database-url", database_url]
    log_path = data_dir.parent / f"{data_dir.name}.server.log"
    with log_path.open("a") as log:
        process = subprocess.Popen(
            fleetkeeper_command(*args),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "FLEETKEEPER_LOG_FORMAT": "json", **(env or {})},
        )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if BANNER_END in line:
            break
    banner = "\n".join(lines)
    urls = dict(match.groups() for line in lines if (match := _BANNER_URL.match(line)))
    if BANNER_END not in banner or len(urls) != 2:
        process.kill()
        raise RuntimeError(f"server did not start:\n{banner}\n{log_path.read_text()[-3000:]}")
    password = _BANNER_PASSWORD.search(banner)
    server = RunningServer(
        process,
        data_dir,
        urls["management"],
        urls["devices"],
        banner,
        password.group(1) if password else None,
    )
    _wait_healthy(server)
    return server


def _wait_healthy(server: RunningServer) -> None:
    for _ in range(100):
        try:
            if httpx2.get(f"{server.management_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server never became healthy")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(name: str = "server", database_url: str | None = None, **kwargs: object) -> RunningServer:
        server = start_server(tmp_path / name, database_url, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


_migrated_template: str | None = None


def migrated_postgres_database() -> str:
    """A new PostgreSQL database at the migrations' head, as `fleetkeeper db upgrade` leaves one: a copy
    of one that this process upgraded with that command the first time it was asked (copying is much
    quicker than a migration run). The caller drops it (`_drop`); the template goes at the session's end."""
    global _migrated_template
    if _migrated_template is None:
        template_url = asyncio.run(PostgresServer(POSTGRES_URL).create_database())
        subprocess.run(
            fleetkeeper_command("db", "upgrade", "--database-url", template_url),
            check=True,
            capture_output=True,
        )
        _migrated_template = template_url
    template = _migrated_template.rsplit("/", 1)[1]
    return asyncio.run(PostgresServer(POSTGRES_URL).create_database(template=template))


@pytest.fixture(scope="session", autouse=True)
def _drop_migrated_template() -> Iterator[None]:
    yield
    if _migrated_template is not None:
        asyncio.run(_drop(_migrated_template))


@pytest.fixture(scope="module", params=BACKENDS)
def running_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server on free ports with a temporary data directory, on SQLite and on PostgreSQL."""
    data_dir = tmp_path_factory.mktemp("server") / "data"
    database_url = migrated_postgres_database() if request.param == "postgresql" else None
    server = start_server(data_dir, database_url)
    yield server
    server.stop()
    if database_url:
        asyncio.run(_drop(database_url))


async def _drop(database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- the management API in process ------------------------------------------------------------

ADMIN_PASSWORD = "correct horse battery staple 42"


RuntimeFactory = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def runtime_factory(database: Database, tmp_path: Path) -> AsyncIterator[RuntimeFactory]:
    """Starts a server's shared state on the test database, as `fleetkeeper serve` would, with
    any settings overridden."""
    started: list[Runtime] = []

    async def start(**overrides: Any) -> Runtime:
        settings = load_settings(
            data_dir=tmp_path / "data",
            database_url=database.url,
            device_server_names=["localhost"],
            **overrides,
        )
        runtime = await Runtime.start(settings)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.close()


@pytest.fixture
async def runtime(runtime_factory: RuntimeFactory) -> Runtime:
    """A server's shared state on the test database, as `fleetkeeper serve` would start it."""
    return await runtime_factory()


@dataclass
class Api:
    """The management app in process, with helpers to sign in as someone."""

    client: httpx2.AsyncClient
    runtime: Runtime
    admin_one_time_password: str
    admin_password_changed: bool = False

    async def sign_in(self, username: str, password: str, **extra: str) -> dict[str, object]:
        response = await self.client.post(
            "/api/v1/auth/sign-in", json={"username": username, "password": password, **extra}
        )
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    async def admin_headers(self) -> dict[str, str]:
        """Signs the first admin in, changing the one-time password the first time."""
        if not self.admin_password_changed:
            first = await self.sign_in("admin", self.admin_one_time_password)
            changed = await self.client.post(
                "/api/v1/me/password",
                json={"current_password": self.admin_one_time_password, "new_password": ADMIN_PASSWORD},
                headers=bearer(first),
            )
            assert changed.status_code == 204, changed.text
            self.admin_password_changed = True
        return bearer(await self.sign_in("admin", ADMIN_PASSWORD))

    async def create_user(
        self, username: str, password: str, roles: list[dict[str, object]] | None = None
    ) -> dict[str, str]:
        """A user with the given roles who has already replaced the admin-set password; returns
        their headers."""
        admin = await self.admin_headers()
        created = await self.client.post(
            "/api/v1/users",
            json={"username": username, "password": password + "-initial", "roles": roles or []},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        first = await self.sign_in(username, password + "-initial")
        changed = await self.client.post(
            "/api/v1/me/password",
            json={"current_password": password + "-initial", "new_password": password},
            headers=bearer(first),
        )
        assert changed.status_code == 204, changed.text
        return bearer(await self.sign_in(username, password))


def bearer(tokens: dict[str, object] | str) -> dict[str, str]:
    token = tokens if isinstance(tokens, str) else str(tokens["access_token"])
    return {"authorization": f"Bearer {token}"}


@asynccontextmanager
async def api_for(runtime: Runtime) -> AsyncIterator[Api]:
    """The management app of `runtime` in process, reached from a fixed client address."""
    assert runtime.first_admin_password, "the test database starts without users"
    app = create_management_app(runtime)
    transport = httpx2.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(client, runtime, runtime.first_admin_password)


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[Api]:
    async with api_for(runtime) as client:
        yield client


@pytest.fixture
def admin_signed_in_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """`api.admin_headers()` signs the admin in once, for tests that would otherwise go past the
    sign-in limits (10 a minute at one account from one network)."""
    sign_in = api.admin_headers
    headers: dict[str, str] = {}

    async def once() -> dict[str, str]:
        if not headers:
            headers.update(await sign_in())
        return headers

    monkeypatch.setattr(api, "admin_headers", once)


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    """In-process tests hash with argon2id's smallest parameters: the suite creates hundreds of
    accounts. Servers started as subprocesses keep the production parameters."""
    from argon2 import PasswordHasher

    from fleetkeeper.access import passwords

    production = passwords._hasher
    passwords._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    passwords._hasher = production


# --- object stores: a directory, and a real S3-compatible server (s3rver on node) ------------


S3_SERVER_DIR = Path(__file__).resolve().parent / "s3_server"
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


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line a child process writes on its standard output, within `timeout` seconds."""
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
            line = read_line(process, 30)
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

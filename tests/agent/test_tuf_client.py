"""`fleetkeeper-agent tuf-client` against a repository built here and served over loopback HTTP, run as
a user (and a conformance tool) would: a subprocess, judged by its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.tuf_repository import Repository, RepositoryServer, in_days, repository_server

SOURCES = Path(__file__).resolve().parents[2] / "src"
PAYLOAD = b"firmware image " * 1000
TARGET = "fw/1.0/fw.bin"


def agent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCES), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "fleetkeeper_agent", "tuf-client", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def repository() -> Repository:
    repository = Repository()
    repository.add_target(TARGET, PAYLOAD)
    repository.publish()
    return repository


@pytest.fixture
def server(repository: Repository) -> Iterator[RepositoryServer]:
    with repository_server() as running:
        running.serve_repository(repository, "/metadata/", "/targets/")
        yield running


class Client:
    def __init__(self, tmp_path: Path, server: RepositoryServer, repository: Repository) -> None:
        self.metadata_dir = tmp_path / "metadata"
        self.target_dir = tmp_path / "targets"
        self.server = server
        self.trusted_root = tmp_path / "trusted-root.json"
        self.trusted_root.write_bytes(repository.root_bytes())

    def run(self, action: str, *extra: str | Path) -> subprocess.CompletedProcess[str]:
        options: list[str | Path] = ["--metadata-dir", self.metadata_dir]
        if action != "init":
            options += ["--metadata-url", f"{self.server.url}/metadata/"]
        if action == "download":
            options += ["--target-name", TARGET, "--target-base-url", f"{self.server.url}/targets/"]
            options += ["--target-dir", self.target_dir]
        return agent(*options, action, *extra)

    def init(self) -> None:
        result = self.run("init", self.trusted_root)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def client(tmp_path: Path, server: RepositoryServer, repository: Repository) -> Client:
    return Client(tmp_path, server, repository)


def target_requests(server: RepositoryServer) -> int:
    return sum(count for path, count in server.requests.items() if path.startswith("/targets/"))


def test_init_refresh_download_and_the_cached_target_is_not_fetched_again(
    client: Client, server: RepositoryServer, repository: Repository
) -> None:
    client.init()
    assert (client.metadata_dir / "root.json").read_bytes() == repository.root_bytes()
    assert server.requests.total() == 0, "init uses no network"

    refreshed = client.run("refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    for name in ("root.json", "timestamp.json", "snapshot.json", "targets.json"):
        assert (client.metadata_dir / name).is_file(), name
    assert (client.metadata_dir / "targets.json").read_bytes() == repository.targets.to_bytes()

    first = client.run("download")
    assert first.returncode == 0, first.stderr
    downloaded = client.target_dir / "fw%2F1.0%2Ffw.bin"
    assert downloaded.read_bytes() == PAYLOAD
    assert target_requests(server) == 1

    second = client.run("download")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert target_requests(server) == 1, "a cached target with the signed hashes is not fetched again"


def test_a_new_target_version_is_downloaded_again(
    client: Client, server: RepositoryServer, repository: Repository
) -> None:
    client.init()
    assert client.run("download").returncode == 0
    repository.add_target(TARGET, PAYLOAD + b"v2")
    repository.publish()
    server.serve_repository(repository, "/metadata/", "/targets/")
    result = client.run("download")
    assert result.returncode == 0, result.stderr
    assert (client.target_dir / "fw%2F1.0%2Ffw.bin").read_bytes() == PAYLOAD + b"v2"
    assert target_requests(server) == 2


def test_expired_timestamp_fails(client: Client, server: RepositoryServer, repository: Repository) -> None:
    repository.publish(timestamp_expires=in_days(-1))
    server.serve_repository(repository, "/metadata/", "/targets/")
    client.init()
    result = client.run("refresh")
    assert result.returncode == 1
    assert "metadata_expired" in result.stderr


def test_tampered_target_fails_and_is_not_kept(client: Client, server: RepositoryServer) -> None:
    client.init()
    server.behaviour.replace_with = PAYLOAD.replace(b"firmware", b"malware!")
    result = client.run("download")
    assert result.returncode == 1
    assert "hash_mismatch" in result.stderr
    assert not any(client.target_dir.iterdir())


def test_a_target_longer_than_signed_fails(client: Client, server: RepositoryServer) -> None:
    client.init()
    server.behaviour.extra_bytes = b"more"
    result = client.run("download")
    assert result.returncode == 1
    assert "download_too_large" in result.stderr


def test_refresh_without_init_fails(client: Client) -> None:
    result = client.run("refresh")
    assert result.returncode == 1
    assert "not_initialized" in result.stderr


def test_metadata_signed_by_an_unknown_key_fails(
    client: Client, server: RepositoryServer, repository: Repository
) -> None:
    client.init()
    from securesystemslib.signer import CryptoSigner

    repository.publish(targets_signer=CryptoSigner.generate_ed25519())
    server.serve_repository(repository, "/metadata/", "/targets/")
    result = client.run("refresh")
    assert result.returncode == 1
    assert "invalid_metadata" in result.stderr


def test_an_unknown_target_and_a_missing_option_fail(client: Client, server: RepositoryServer) -> None:
    client.init()
    unknown = agent(
        "--metadata-dir",
        client.metadata_dir,
        "--metadata-url",
        f"{server.url}/metadata/",
        "--target-name",
        "no/such/file",
        "--target-base-url",
        f"{server.url}/targets/",
        "--target-dir",
        client.target_dir,
        "download",
    )
    assert unknown.returncode == 1
    assert "unknown_target" in unknown.stderr
    missing = agent("--metadata-dir", client.metadata_dir, "refresh")
    assert missing.returncode == 1
    assert "--metadata-url" in missing.stderr


def test_init_refuses_a_file_that_is_not_root_metadata(client: Client, tmp_path: Path) -> None:
    not_root = tmp_path / "not-root.json"
    not_root.write_text('{"signed": {}}')
    result = agent("--metadata-dir", client.metadata_dir, "init", not_root)
    assert result.returncode == 1
    assert "invalid_metadata" in result.stderr

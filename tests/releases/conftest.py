"""Fixtures of the release tests: offline keys and trust (key generation is the slow part). The
object stores (a real S3-compatible server among them) are tests/conftest.py's."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Key

from fleetkeeper.releases.keys import init_keys
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

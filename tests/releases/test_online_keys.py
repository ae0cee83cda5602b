"""The online keys: made once with mode 0600, reused afterwards, a partial set refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetkeeper.core.pki import write_private_key
from fleetkeeper.releases.online_keys import (
    ONLINE_ROLES,
    OnlineKeysError,
    key_file_name,
    load_or_create_online_keys,
)

CONTRACT_FILE_NAMES = {
    "snapshot.key",
    "timestamp.key",
    "director-targets.key",
    "director-snapshot.key",
    "director-timestamp.key",
}


def test_keys_are_created_as_the_contract_names_them_with_mode_0600(tmp_path: Path) -> None:
    directory = tmp_path / "pki" / "tuf"
    load_or_create_online_keys(directory)

    assert {path.name for path in directory.iterdir()} == CONTRACT_FILE_NAMES
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not a raw format
        assert type(key).__name__.startswith("Ed25519")


def test_public_keys_have_the_shape_of_the_online_keys_route(tmp_path: Path) -> None:
    keys = load_or_create_online_keys(tmp_path)
    public = keys.public_keys()

    assert set(public) == {
        "snapshot",
        "timestamp",
        "director_targets",
        "director_snapshot",
        "director_timestamp",
    }
    for role, entry in public.items():
        assert set(entry) == {"keyid", "public"}
        assert entry["keyid"] == keys.key(role).keyid
        assert entry["public"]["keytype"] == "ed25519"
        assert entry["public"]["scheme"] == "ed25519"
        assert "private" not in entry["public"]["keyval"]
    assert len({entry["keyid"] for entry in public.values()}) == len(ONLINE_ROLES)


def test_each_signer_matches_its_public_key(tmp_path: Path) -> None:
    keys = load_or_create_online_keys(tmp_path)
    for role in ONLINE_ROLES:
        signature = keys.signer(role).sign(b"payload")
        keys.key(role).verify_signature(signature, b"payload")


def test_existing_keys_are_reused_untouched(tmp_path: Path) -> None:
    first = load_or_create_online_keys(tmp_path)
    contents = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    second = load_or_create_online_keys(tmp_path)

    assert second.public_keys() == first.public_keys()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == contents


def test_a_directory_with_only_some_keys_is_refused_and_left_alone(tmp_path: Path) -> None:
    load_or_create_online_keys(tmp_path)
    (tmp_path / key_file_name("director_timestamp")).unlink()
    before = sorted(path.name for path in tmp_path.iterdir())

    with pytest.raises(OnlineKeysError, match=r"only some.*director-timestamp\.key"):
        load_or_create_online_keys(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_a_key_of_another_type_is_refused(tmp_path: Path) -> None:
    load_or_create_online_keys(tmp_path)
    write_private_key(tmp_path / "snapshot.key", ec.generate_private_key(ec.SECP256R1()))

    with pytest.raises(OnlineKeysError, match="Ed25519"):
        load_or_create_online_keys(tmp_path)


def test_an_unknown_role_is_named_in_the_error(tmp_path: Path) -> None:
    keys = load_or_create_online_keys(tmp_path)
    with pytest.raises(KeyError, match="root"):
        keys.signer("root")

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleetkeeper.releases.errors import KeysError
from fleetkeeper.releases.keys import init_keys, load_role_signers, role_public_keys


def test_init_writes_private_keys_0600_and_keys_json(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    init_keys(directory, threshold=2, count=3)
    expected = {"keys.json", *(f"{role}-{i}.key" for role in ("root", "targets") for i in (1, 2, 3))}
    assert {p.name for p in directory.iterdir()} == expected
    for key_file in directory.glob("*.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    description = json.loads((directory / "keys.json").read_text())
    assert set(description) == {"root", "targets"}
    assert description["targets"]["threshold"] == 2
    entry = description["root"]["keys"][0]
    assert entry["uri"] == "file2:root-1.key"
    assert entry["public"]["keytype"] == "ed25519"


def test_file2_uris_load_relative_to_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "keys"
    init_keys(directory, threshold=1, count=2)
    monkeypatch.chdir(tmp_path.parent)
    threshold, signers = load_role_signers(directory, "targets")
    _, public = role_public_keys(directory, "targets")
    assert threshold == 1
    assert [s.public_key.keyid for s in signers] == [k.keyid for k in public]
    signature = signers[0].sign(b"release")
    public[0].verify_signature(signature, b"release")


def test_signers_skip_absent_file_keys(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    init_keys(directory, threshold=2, count=2)
    (directory / "targets-1.key").unlink()
    threshold, signers = load_role_signers(directory, "targets")
    assert threshold == 2
    assert len(signers) == 1


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    init_keys(directory, threshold=1, count=1)
    before = (directory / "root-1.key").read_bytes()
    with pytest.raises(KeysError) as refused:
        init_keys(directory, threshold=1, count=1)
    assert refused.value.code == "keys_exist"
    assert (directory / "root-1.key").read_bytes() == before


def test_refuses_a_threshold_above_the_count(tmp_path: Path) -> None:
    with pytest.raises(KeysError):
        init_keys(tmp_path / "keys", threshold=3, count=2)

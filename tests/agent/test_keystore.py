"""The file key store: 0600 from creation, no silent overwrite, and a key swap a crash cannot split."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.keystore import FileKeyStore, KeyExistsError
from fleetkeeper_agent.keytypes import KeyType
from tests.agent.fakeserver import FakeCA

KEY_TYPES: list[KeyType] = ["ed25519", "ecdsa-p256"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def certificate_for(ca: FakeCA, store: FileKeyStore, *, staged: bool = False, name: str = "dev_1") -> bytes:
    key = serialization.load_pem_public_key(store.public_key_pem(staged=staged).encode())
    return ca.issue(key, name).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_generate_writes_a_0600_key_of_the_type_asked(tmp_path: Path, key_type: KeyType) -> None:
    store = FileKeyStore(tmp_path / "agent")
    assert not store.exists()
    store.generate(key_type)
    assert store.exists()
    assert mode(store.key_path) == 0o600
    assert mode(store.directory) == 0o700
    assert store.key_type() == key_type
    key = serialization.load_pem_private_key(store.key_path.read_bytes(), password=None)
    expected = ed25519.Ed25519PrivateKey if key_type == "ed25519" else ec.EllipticCurvePrivateKey
    assert isinstance(key, expected)
    public = serialization.load_pem_public_key(store.public_key_pem().encode())
    assert public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert [p.name for p in store.directory.iterdir()] == ["device.key"]  # no temporary file left


def test_the_default_key_type_is_ed25519(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path)
    store.generate()
    assert store.key_type() == "ed25519"


def test_the_key_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        store = FileKeyStore(tmp_path)
        store.generate()
        store.stage_key()
    finally:
        os.umask(previous)
    assert mode(store.key_path) == 0o600
    assert mode(store.staged_key_path) == 0o600


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path)
    store.generate()
    before = store.key_path.read_bytes()
    with pytest.raises(KeyExistsError) as raised:
        store.generate("ecdsa-p256")
    assert raised.value.code == "key_exists"
    assert store.key_path.read_bytes() == before


def test_an_unknown_key_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AgentError) as raised:
        FileKeyStore(tmp_path).generate("rsa-2048")  # type: ignore[arg-type]
    assert raised.value.code == "invalid_key_type"


def test_signing_without_a_key_says_so(tmp_path: Path) -> None:
    with pytest.raises(AgentError) as raised:
        FileKeyStore(tmp_path).sign(b"x")
    assert raised.value.code == "no_key"


def test_a_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    ca = FakeCA.create()
    store = FileKeyStore(tmp_path)
    store.generate()
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    foreign = ca.issue(other, "dev_1").public_bytes(serialization.Encoding.PEM)
    with pytest.raises(AgentError) as raised:
        store.store_certificate(foreign, ca.pem)
    assert raised.value.code == "certificate_key_mismatch"
    assert store.load_certificate() is None
    store.store_certificate(certificate_for(ca, store), ca.pem)
    certificate = store.load_certificate()
    assert certificate is not None
    assert store.load_ca_pem() == ca.pem


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_rotation_stages_a_key_then_swaps_key_and_certificate(tmp_path: Path, key_type: KeyType) -> None:
    ca = FakeCA.create()
    store = FileKeyStore(tmp_path)
    store.generate()
    store.store_certificate(certificate_for(ca, store), ca.pem)
    old_key = store.key_path.read_bytes()

    store.stage_key(key_type)
    assert store.has_staged_key()
    assert mode(store.staged_key_path) == 0o600
    assert store.key_path.read_bytes() == old_key  # the current key goes on working meanwhile
    assert store.key_type(staged=True) == key_type
    staged = store.staged_key_path.read_bytes()
    with pytest.raises(KeyExistsError):
        store.stage_key(key_type)  # the rotation in progress keeps its key
    assert store.staged_key_path.read_bytes() == staged

    with pytest.raises(AgentError):
        store.commit_staged_key(certificate_for(ca, store, staged=False), ca.pem)  # the old key's
    assert store.key_path.read_bytes() == old_key

    store.commit_staged_key(certificate_for(ca, store, staged=True), ca.pem)
    assert store.key_path.read_bytes() == staged
    assert mode(store.key_path) == 0o600
    assert not store.has_staged_key()
    assert not store.pending_certificate_path.exists()
    store.load_certificate()  # parses
    assert store.key_type() == key_type


def test_a_swap_cut_short_is_finished_when_the_store_is_opened(tmp_path: Path) -> None:
    ca = FakeCA.create()
    store = FileKeyStore(tmp_path)
    store.generate()
    store.store_certificate(certificate_for(ca, store), ca.pem)
    store.stage_key()
    staged_key = store.staged_key_path.read_bytes()
    new_certificate = certificate_for(ca, store, staged=True)

    # The crash came after the journal (device.crt.new) was written, before either rename.
    store.pending_certificate_path.write_bytes(new_certificate)
    reopened = FileKeyStore(tmp_path)
    assert reopened.key_path.read_bytes() == staged_key
    assert reopened.certificate_path.read_bytes() == new_certificate
    assert not reopened.has_staged_key()
    assert not reopened.pending_certificate_path.exists()

    # The crash came between the key's rename and the certificate's.
    reopened.stage_key()
    newer_certificate = certificate_for(ca, reopened, staged=True)
    reopened.pending_certificate_path.write_bytes(newer_certificate)
    os.replace(reopened.staged_key_path, reopened.key_path)
    again = FileKeyStore(tmp_path)
    assert again.certificate_path.read_bytes() == newer_certificate
    assert not again.pending_certificate_path.exists()


def test_a_left_over_certificate_for_neither_key_is_dropped(tmp_path: Path) -> None:
    ca = FakeCA.create()
    store = FileKeyStore(tmp_path)
    store.generate()
    current = certificate_for(ca, store)
    store.store_certificate(current, ca.pem)
    stray = ca.issue(ed25519.Ed25519PrivateKey.generate().public_key(), "dev_1")
    store.pending_certificate_path.write_bytes(stray.public_bytes(serialization.Encoding.PEM))
    reopened = FileKeyStore(tmp_path)
    assert not reopened.pending_certificate_path.exists()
    assert reopened.certificate_path.read_bytes() == current


def test_discarding_the_staged_key(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path)
    store.generate()
    store.stage_key()
    store.discard_staged_key()
    assert not store.has_staged_key()
    store.stage_key()

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import Metadata, Root

from fleetkeeper.releases.errors import TrustError
from fleetkeeper.releases.keys import init_keys, load_role_signers
from fleetkeeper.releases.trust import (
    InitialTrust,
    build_initial_trust,
    check_initial_trust,
    check_root_update,
    image_online_keys,
    online_keys_from_json,
    parse_root,
    rotate_root,
)
from tests.conftest import Api
from tests.helpers.releases import in_days


def test_initial_trust_verifies(trust: InitialTrust, online_keys: dict[str, Key]) -> None:
    check_initial_trust(trust.root, trust.targets, trust.director_root, online_keys)
    root = trust.root.signed
    assert root.consistent_snapshot
    assert set(root.roles) == {"root", "targets", "snapshot", "timestamp"}
    assert root.roles["snapshot"].keyids == [online_keys["snapshot"].keyid]
    director = trust.director_root.signed
    assert director.roles["targets"].keyids == [online_keys["director_targets"].keyid]
    assert director.roles["root"].keyids == root.roles["root"].keyids
    assert trust.targets.signed.version == 1
    assert trust.targets.signed.targets == {}


def test_initial_trust_must_name_the_servers_online_keys(
    trust: InitialTrust, online_keys: dict[str, Key]
) -> None:
    other = dict(online_keys, timestamp=CryptoSigner.generate_ed25519().public_key)
    with pytest.raises(TrustError) as refused:
        check_initial_trust(trust.root, trust.targets, trust.director_root, other)
    assert refused.value.code == "wrong_online_keys"


def test_initial_trust_with_a_tampered_root_is_refused(
    trust: InitialTrust, online_keys: dict[str, Key]
) -> None:
    root = parse_root(trust.root.to_bytes())
    root.signed.expires += timedelta(days=1)
    with pytest.raises(TrustError) as refused:
        check_initial_trust(root, trust.targets, trust.director_root, online_keys)
    assert refused.value.code == "bad_signature"


def test_parse_root_refuses_other_metadata(trust: InitialTrust) -> None:
    with pytest.raises(TrustError) as refused:
        parse_root(trust.targets.to_bytes())
    assert refused.value.code == "invalid_metadata"
    with pytest.raises(TrustError):
        parse_root(b"{not json")


def _holder_accepts(trusted: Root, new: Metadata[Root]) -> Root:
    """What a TUF client does with the next root: the trusted root and the new one both verify it."""
    assert new.signed.version == trusted.version + 1
    trusted.verify_delegate("root", new.signed_bytes, new.signatures)
    new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    return new.signed


@pytest.fixture(scope="module")
def rotated(
    tmp_path_factory: pytest.TempPathFactory, trust: InitialTrust, keys_dir: Path
) -> list[Metadata[Root]]:
    second = tmp_path_factory.mktemp("rot") / "second"
    third = tmp_path_factory.mktemp("rot") / "third"
    init_keys(second, threshold=2, count=3)
    init_keys(third, threshold=1, count=1)
    v2 = rotate_root(trust.root, keys_dir, second, in_days(365))
    v3 = rotate_root(v2, second, third, in_days(365))
    return [trust.root, v2, v3]


def test_a_v1_holder_accepts_v2_then_v3(rotated: list[Metadata[Root]], online_keys: dict[str, Key]) -> None:
    v1, v2, v3 = rotated
    trusted = v1.signed
    trusted = _holder_accepts(trusted, v2)
    trusted = _holder_accepts(trusted, v3)
    assert trusted.version == 3
    check_root_update(v1, v2, image_online_keys(online_keys))
    check_root_update(v2, v3, image_online_keys(online_keys))
    # Only the root keys changed: the online and release keys are named as before.
    assert v3.signed.roles["targets"].keyids == v1.signed.roles["targets"].keyids
    assert v3.signed.roles["root"].threshold == 1


def test_a_root_signed_only_by_the_new_keys_is_refused(rotated: list[Metadata[Root]], tmp_path: Path) -> None:
    v1, v2, _ = rotated
    forged = Metadata[Root].from_bytes(v2.to_bytes())
    forged.signatures.clear()
    new_root_keyids = set(forged.signed.roles["root"].keyids)
    assert not new_root_keyids & set(v1.signed.roles["root"].keyids)
    # Re-sign with the new keys only (v2's signatures by them, without the old key's).
    for keyid, signature in v2.signatures.items():
        if keyid in new_root_keyids:
            forged.signatures[keyid] = signature
    with pytest.raises(TrustError) as refused:
        check_root_update(v1, forged)
    assert refused.value.code in {"below_threshold", "unknown_key"}


def test_root_updates_must_follow_the_current_version(rotated: list[Metadata[Root]]) -> None:
    v1, _, v3 = rotated
    with pytest.raises(TrustError) as refused:
        check_root_update(v1, v3)
    assert refused.value.code == "wrong_version"
    with pytest.raises(TrustError) as refused:
        check_root_update(v1, v1)
    assert refused.value.code == "wrong_version"


def test_a_new_root_with_a_bad_old_signature_is_refused(
    rotated: list[Metadata[Root]], keys_dir: Path
) -> None:
    v1, v2, _ = rotated
    tampered = Metadata[Root].from_bytes(v2.to_bytes())
    old_keyid = v1.signed.roles["root"].keyids[0]
    signature = tampered.signatures[old_keyid]
    flipped = bytearray(bytes.fromhex(signature.signature))
    flipped[0] ^= 1
    signature.signature = flipped.hex()
    with pytest.raises(TrustError) as refused:
        check_root_update(v1, tampered)
    assert refused.value.code == "bad_signature"


def test_a_root_below_the_offline_threshold_is_not_built(tmp_path: Path, online_keys: dict[str, Key]) -> None:
    directory = tmp_path / "keys"
    init_keys(directory, threshold=2, count=2)
    (directory / "root-2.key").unlink()
    assert len(load_role_signers(directory, "root")[1]) == 1
    with pytest.raises(TrustError) as refused:
        build_initial_trust(directory, online_keys, datetime.now(UTC) + timedelta(days=1))
    assert refused.value.code == "below_threshold"


async def test_installing_non_root_metadata_as_the_root_is_a_clear_422(api: Api, tmp_path: Path) -> None:
    admin = await api.admin_headers()

    init_keys(tmp_path / "k", threshold=1, count=1)
    trust = build_initial_trust(
        tmp_path / "k", online_keys_from_json(api.runtime.online_keys.public_keys()), in_days(9)
    )
    swapped = await api.client.post(
        "/api/v1/repository/trust",
        json={
            "root": trust.targets.to_dict(),
            "targets": trust.targets.to_dict(),
            "director_root": trust.director_root.to_dict(),
        },
        headers=admin,
    )
    assert swapped.status_code == 422
    assert swapped.json()["code"] == "invalid_metadata"

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Targets

from fleetkeeper.releases.artifact import Artifact, read_artifact, write_targets
from fleetkeeper.releases.errors import ReleaseRefused
from fleetkeeper.releases.keys import init_keys, load_role_signers
from fleetkeeper.releases.signing import sign_release
from fleetkeeper.releases.trust import InitialTrust
from fleetkeeper.releases.verification import verify_release
from tests.helpers.releases import in_days
from tests.releases.conftest import engineer_copy
from tests.releases.test_artifact import make_artifact

MAX = 1 << 30
NOW = datetime.now(UTC)


def signed_artifact(
    tmp_path: Path, keys_dir: Path, trust: InitialTrust, payload: bytes = b"image"
) -> Artifact:
    path = make_artifact(tmp_path, payload=payload)
    sign_release(path, keys_dir, trust.targets, in_days(30))
    return read_artifact(path, max_bytes=MAX)


def refusal(artifact: Artifact, trust: InitialTrust, max_bytes: int = MAX, now: datetime = NOW) -> str:
    with pytest.raises(ReleaseRefused) as refused:
        verify_release(artifact, trust.root, trust.targets, max_bytes=max_bytes, now=now)
    return refused.value.code


def test_sign_makes_the_next_version_with_the_target(
    tmp_path: Path, keys_dir: Path, trust: InitialTrust
) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    assert artifact.targets_json is not None
    targets = Metadata[Targets].from_bytes(artifact.targets_json).signed
    assert targets.version == trust.targets.signed.version + 1
    target = targets.targets["gateway-os/1.2.0/image.bin"]
    assert target.length == 5
    assert target.hashes["sha256"] == artifact.payload_sha256()
    assert target.custom["fleetkeeper"] == {
        "name": "gateway-os",
        "version": "1.2.0",
        "release_counter": 7,
        "module": "rootfs-ab",
        "device_types": ["rpi4"],
        "depends": {"bootloader": "2"},
        "provides": {"os": "1.2.0"},
        "sbom_sha256": None,
    }


def test_a_good_release_is_accepted(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    verified = verify_release(artifact, trust.root, trust.targets, max_bytes=MAX, now=NOW)
    assert verified.target.path == artifact.target_path
    assert verified.signer_keyids == trust.root.signed.roles["targets"].keyids
    assert verified.targets.signed.version == 2
    assert verified.manifest["release_counter"] == 7


def test_two_engineers_merge_signatures_to_reach_threshold_two(
    tmp_path: Path, two_keys_dir: Path, trust2: InitialTrust
) -> None:
    first = engineer_copy(two_keys_dir, tmp_path / "alice", keep="targets-1.key")
    second = engineer_copy(two_keys_dir, tmp_path / "bob", keep="targets-2.key")
    path = make_artifact(tmp_path)
    sign_release(path, first, trust2.targets, in_days(30))
    assert refusal(read_artifact(path, max_bytes=MAX), trust2) == "below_threshold"
    signed_once = Metadata[Targets].from_bytes(read_artifact(path, max_bytes=MAX).targets_json or b"")
    # Bob signs later, with another expiry in mind: Alice's signed content is kept.
    merged = sign_release(path, second, trust2.targets, in_days(60))
    assert merged.signed == signed_once.signed
    assert len(merged.signatures) == 2
    verified = verify_release(
        read_artifact(path, max_bytes=MAX), trust2.root, trust2.targets, max_bytes=MAX, now=NOW
    )
    assert len(verified.signer_keyids) == 2


def test_a_tampered_signature_is_bad_signature(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    metadata = Metadata[Targets].from_bytes(artifact.targets_json or b"")
    for signature in metadata.signatures.values():
        raw = bytearray(bytes.fromhex(signature.signature))
        raw[5] ^= 0x40
        signature.signature = raw.hex()
    assert refusal(write_targets(artifact, metadata.to_bytes()), trust) == "bad_signature"


def test_a_key_the_root_does_not_name_is_unknown_key(tmp_path: Path, trust: InitialTrust) -> None:
    stranger = tmp_path / "stranger"
    init_keys(stranger, threshold=1, count=1)
    artifact = signed_artifact(tmp_path, stranger, trust)
    assert refusal(artifact, trust) == "unknown_key"


def test_an_unsigned_vn1_is_below_threshold(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    metadata = Metadata[Targets].from_bytes(artifact.targets_json or b"")
    metadata.signatures.clear()
    assert refusal(write_targets(artifact, metadata.to_bytes()), trust) == "below_threshold"


def test_a_version_not_newer_is_stale(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    current = Metadata[Targets].from_bytes(artifact.targets_json or b"")
    with pytest.raises(ReleaseRefused) as refused:
        verify_release(artifact, trust.root, current, max_bytes=MAX, now=NOW)
    assert refused.value.code == "stale_metadata_version"


def test_expired_metadata_is_refused(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    assert refusal(artifact, trust, now=NOW + timedelta(days=31)) == "metadata_expired"


def test_a_payload_over_the_limit_is_too_large(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    assert refusal(artifact, trust, max_bytes=4) == "payload_too_large"


def _swap_payload(artifact: Artifact, payload: bytes) -> Artifact:
    """The same artifact with another payload: release.json and the signed targets left as they were."""
    out = artifact.path.with_suffix(".swapped.fkr")
    with tarfile.open(artifact.path) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in source.getmembers():
            data = source.extractfile(info)
            assert data is not None
            content = payload if info.name.startswith("payload/") else data.read()
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return read_artifact(out, max_bytes=MAX)


def test_a_payload_of_another_length_is_refused(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust, payload=b"image")
    assert refusal(_swap_payload(artifact, b"image, longer"), trust) == "payload_length_mismatch"


def test_a_swapped_payload_is_a_hash_mismatch(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust, payload=b"image")
    assert refusal(_swap_payload(artifact, b"evil!"), trust) == "payload_hash_mismatch"


def test_no_device_type_is_missing_device_type(tmp_path: Path, keys_dir: Path, trust: InitialTrust) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    bare = Artifact(**{**artifact.__dict__, "release": {**artifact.release, "device_types": []}})
    assert refusal(bare, trust) == "missing_device_type"


def test_an_unsigned_artifact_is_invalid(tmp_path: Path, trust: InitialTrust) -> None:
    assert refusal(read_artifact(make_artifact(tmp_path), max_bytes=MAX), trust) == "invalid_artifact"


def test_a_release_the_targets_do_not_list_is_invalid(
    tmp_path: Path, keys_dir: Path, trust: InitialTrust
) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    renamed = Artifact(**{**artifact.__dict__, "release": {**artifact.release, "version": "9.9"}})
    assert refusal(renamed, trust) == "invalid_artifact"
    relabelled = Artifact(**{**artifact.__dict__, "release": {**artifact.release, "release_counter": 99}})
    assert refusal(relabelled, trust) == "invalid_artifact"


def test_a_root_named_key_of_another_role_is_unknown_for_targets(
    tmp_path: Path, keys_dir: Path, trust: InitialTrust
) -> None:
    artifact = signed_artifact(tmp_path, keys_dir, trust)
    metadata = Metadata[Targets].from_bytes(artifact.targets_json or b"")
    metadata.signatures.clear()
    metadata.sign(load_role_signers(keys_dir, "root")[1][0])
    assert refusal(write_targets(artifact, metadata.to_bytes()), trust) == "unknown_key"

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper.releases.artifact import create_artifact, read_artifact, validate_release, write_targets
from fleetkeeper.releases.errors import ArtifactError

MAX = 1 << 30


def make_artifact(tmp_path: Path, payload: bytes = b"firmware image\n", **overrides: Any) -> Path:
    payload_path = tmp_path / "image.bin"
    payload_path.write_bytes(payload)
    fields: dict[str, Any] = {
        "name": "gateway-os",
        "version": "1.2.0",
        "release_counter": 7,
        "module": "rootfs-ab",
        "device_types": ["rpi4"],
        "depends": {"bootloader": "2"},
        "provides": {"os": "1.2.0"},
        "payload_paths": [payload_path],
        "sbom_path": None,
    }
    fields.update(overrides)
    out = tmp_path / "release.fkr"
    create_artifact(out, **fields)
    return out


def test_round_trip_single_file(tmp_path: Path) -> None:
    sbom = tmp_path / "sbom.json"
    sbom.write_text('{"bomFormat": "CycloneDX"}')
    artifact = read_artifact(make_artifact(tmp_path, sbom_path=sbom), max_bytes=MAX)
    assert artifact.release["name"] == "gateway-os"
    assert artifact.release["sbom"]["length"] == sbom.stat().st_size
    assert artifact.sbom == sbom.read_bytes()
    assert artifact.target_path == "gateway-os/1.2.0/image.bin"
    offset, length = artifact.payload_member()
    with artifact.path.open("rb") as source:
        source.seek(offset)
        assert source.read(length) == b"firmware image\n"
    assert artifact.payload_sha256() == artifact.release["payload"]["sha256"]
    assert artifact.targets_json is None


def test_round_trip_file_tree(tmp_path: Path) -> None:
    tree = tmp_path / "app"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_text("#!/bin/sh\n")
    (tree / "config.toml").write_text("a = 1\n")
    extra = tmp_path / "README"
    extra.write_text("hello")
    artifact = read_artifact(
        make_artifact(tmp_path, payload_paths=[tree, extra], module="directory"), max_bytes=MAX
    )
    assert artifact.payload_file == "payload.tar"
    with tarfile.open(fileobj=io.BytesIO(b"".join(artifact.iter_payload()))) as inner:
        assert sorted(inner.getnames()) == ["README", "app/bin/run", "app/config.toml"]


def test_symlinks_in_inputs_are_refused(tmp_path: Path) -> None:
    tree = tmp_path / "app"
    tree.mkdir()
    (tree / "link").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError):
        make_artifact(tmp_path, payload_paths=[tree])


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"name": "../evil"}, "invalid_artifact"),
        ({"name": "uploads"}, "invalid_artifact"),
        ({"version": ""}, "invalid_artifact"),
        ({"release_counter": -1}, "invalid_artifact"),
        ({"module": "exe"}, "invalid_artifact"),
        ({"device_types": []}, "missing_device_type"),
    ],
)
def test_bad_release_fields_are_refused(tmp_path: Path, overrides: dict[str, Any], code: str) -> None:
    with pytest.raises(ArtifactError) as refused:
        make_artifact(tmp_path, **overrides)
    assert refused.value.code == code


def test_custom_modules_are_accepted(tmp_path: Path) -> None:
    assert read_artifact(make_artifact(tmp_path, module="x-firmware-blob"), max_bytes=MAX).release["module"]


def test_write_targets_adds_then_replaces(tmp_path: Path) -> None:
    artifact = read_artifact(make_artifact(tmp_path), max_bytes=MAX)
    first = write_targets(artifact, b'{"first": 1}')
    assert first.targets_json == b'{"first": 1}'
    second = write_targets(first, b'{"second": 2}')
    assert second.targets_json == b'{"second": 2}'
    assert second.payload_sha256() == artifact.payload_sha256()
    assert second.release_json == artifact.release_json
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


# Hostile artifacts, built by hand.

RELEASE_OK: dict[str, Any] = {
    "format": "fleetkeeper-release-v1",
    "name": "x",
    "version": "1",
    "release_counter": 0,
    "module": "file",
    "device_types": ["t"],
    "depends": {},
    "provides": {},
    "payload": {"path": "payload/p.bin", "length": 3, "sha256": "0" * 64},
    "sbom": None,
}


def _add(tar: tarfile.TarFile, name: str, content: bytes = b"abc", **attributes: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    for attribute, value in attributes.items():
        setattr(info, attribute, value)
    tar.addfile(info, io.BytesIO(content) if info.isreg() else None)


def hostile(tmp_path: Path, extra: list[tuple[str, dict[str, Any]]], release: bool = True) -> Path:
    out = tmp_path / "hostile.fkr"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        if release:
            _add(tar, "release.json", json.dumps(RELEASE_OK).encode())
        _add(tar, "payload/p.bin")
        for name, attributes in extra:
            _add(tar, name, **attributes)
    return out


def test_the_hand_built_baseline_is_accepted(tmp_path: Path) -> None:
    assert read_artifact(hostile(tmp_path, []), max_bytes=MAX).payload_length == 3


@pytest.mark.parametrize(
    "extra",
    [
        [("/etc/cron.d/evil", {})],
        [("payload/../../evil", {})],
        [("../release.json", {})],
        [("sbom.json", {"type": tarfile.SYMTYPE, "linkname": "/etc/shadow"})],
        [("metadata/targets.json", {"type": tarfile.LNKTYPE, "linkname": "release.json"})],
        [("sbom.json", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})],
        [("payload/", {"type": tarfile.DIRTYPE})],
        [("notes.txt", {})],
        [("payload/second.bin", {})],
        [("release.json", {})],
    ],
    ids=[
        "absolute",
        "dotdot",
        "dotdot-top",
        "symlink",
        "hardlink",
        "device",
        "dir",
        "extra",
        "two-payloads",
        "dup",
    ],
)
def test_hostile_members_are_refused(tmp_path: Path, extra: list[tuple[str, dict[str, Any]]]) -> None:
    with pytest.raises(ArtifactError) as refused:
        read_artifact(hostile(tmp_path, extra), max_bytes=MAX)
    assert refused.value.code == "invalid_artifact"


def test_missing_release_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as refused:
        read_artifact(hostile(tmp_path, [], release=False), max_bytes=MAX)
    assert refused.value.code == "invalid_artifact"


def test_an_oversized_payload_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as refused:
        read_artifact(hostile(tmp_path, []), max_bytes=2)
    assert refused.value.code == "payload_too_large"


def test_a_member_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    out = hostile(tmp_path, [])
    data = out.read_bytes()
    # Cut the payload's data short: its header still declares 3 bytes.
    index = data.index(b"abc")
    out.write_bytes(data[: index + 1])
    with pytest.raises(ArtifactError) as refused:
        read_artifact(out, max_bytes=MAX)
    assert refused.value.code == "invalid_artifact"


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "x.fkr"
    out.write_bytes(b"\x1f\x8b" + b"gzip?" * 200)
    with pytest.raises(ArtifactError) as refused:
        read_artifact(out, max_bytes=MAX)
    assert refused.value.code == "invalid_artifact"


@pytest.mark.parametrize("name", [".", "..", ".hidden", "-x"])
def test_release_names_cannot_be_path_segments(name: str) -> None:
    release = {
        "format": "fleetkeeper-release-v1",
        "name": name,
        "version": "1.0",
        "release_counter": 1,
        "module": "file",
        "device_types": ["rpi4"],
        "depends": {},
        "provides": {},
        "payload": {"path": "x", "length": 1, "sha256": "0" * 64},
        "sbom": None,
    }
    with pytest.raises(ArtifactError):
        validate_release(release)

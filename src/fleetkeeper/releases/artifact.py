"""Release artifacts (.fkr): an uncompressed POSIX tar of release.json, the payload, an optional
SBOM and, once signed, metadata/targets.json (docs/software-trust.md, "A release").

Reading is defensive because the server reads what anyone with `releases:upload` sent: only the
expected member names, regular files only, every member inside the file, sizes bounded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fleetkeeper.releases.errors import ArtifactError

FORMAT = "fleetkeeper-release-v1"
RELEASE_MEMBER = "release.json"
SBOM_MEMBER = "sbom.json"
TARGETS_MEMBER = "metadata/targets.json"
PAYLOAD_DIR = "payload/"
TREE_PAYLOAD = "payload.tar"
MODULES = ("file", "directory", "script", "rootfs-ab", "container", "package")
# JSON members are read into memory: bound them well above any honest size.
MAX_JSON_BYTES = 16 * 1024 * 1024
CHUNK = 1024 * 1024

# Starting with a letter or digit: no ".", "..", or hidden path segments in target paths.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
RESERVED_NAMES = frozenset({"uploads"})
FILE_RE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")
CUSTOM_MODULE_RE = re.compile(r"x-[a-z0-9][a-z0-9._-]{0,62}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
RELEASE_KEYS = {
    "format",
    "name",
    "version",
    "release_counter",
    "module",
    "device_types",
    "depends",
    "provides",
    "payload",
    "sbom",
}


@dataclass(frozen=True)
class Artifact:
    """A release artifact read safely; the payload stays in the file, at `payload_offset`."""

    path: Path
    release: dict[str, Any]
    release_json: bytes
    payload_file: str
    payload_offset: int
    payload_length: int
    sbom: bytes | None
    targets_json: bytes | None

    @property
    def target_path(self) -> str:
        """The TUF target path: `<name>/<version>/<file>`."""
        return f"{self.release['name']}/{self.release['version']}/{self.payload_file}"

    def payload_member(self) -> tuple[int, int]:
        """(offset, length) of the payload's bytes in the artifact file, to copy it without extracting."""
        return self.payload_offset, self.payload_length

    def iter_payload(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.path.open("rb") as source:
            source.seek(self.payload_offset)
            remaining = self.payload_length
            while remaining:
                chunk = source.read(min(chunk_size, remaining))
                if not chunk:
                    raise ArtifactError("invalid_artifact", "the payload is truncated")
                remaining -= len(chunk)
                yield chunk

    def payload_sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.iter_payload():
            digest.update(chunk)
        return digest.hexdigest()


def _invalid(detail: str) -> ArtifactError:
    return ArtifactError("invalid_artifact", detail)


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            length += len(chunk)
    return length, digest.hexdigest()


def _tar_info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    # Fixed owner and time: the same inputs make the same artifact.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    tar.addfile(_tar_info(name, len(content)), io.BytesIO(content))


def _tree_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, name in payload.tar) for every file under `paths`, named relative to each path's parent."""
    files: dict[str, Path] = {}
    for top in paths:
        if top.is_symlink():
            raise _invalid(f"{top} is a symbolic link")
        candidates = [top] if top.is_file() else sorted(p for p in top.rglob("*"))
        if not top.is_file() and not top.is_dir():
            raise _invalid(f"{top} is neither a regular file nor a directory")
        for path in candidates:
            if path.is_symlink():
                raise _invalid(f"{path} is a symbolic link")
            if path.is_dir():
                continue
            if not path.is_file():
                raise _invalid(f"{path} is not a regular file")
            name = path.relative_to(top.parent).as_posix()
            if name in files:
                raise _invalid(f"two inputs are named {name} in the payload")
            files[name] = path
    return sorted((path, name) for name, path in files.items())


def _write_tree(paths: list[Path], out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in _tree_files(paths):
            info = _tar_info(name, path.stat().st_size, stat.S_IMODE(path.stat().st_mode) & 0o755)
            with path.open("rb") as source:
                tar.addfile(info, source)


def create_artifact(
    out_path: Path,
    *,
    name: str,
    version: str,
    release_counter: int,
    module: str,
    device_types: list[str],
    depends: dict[str, str],
    provides: dict[str, str],
    payload_paths: list[Path],
    sbom_path: Path | None = None,
) -> dict[str, Any]:
    """Write the artifact; return its release.json content.

    One regular file is the payload as is; several paths or a directory become payload.tar.
    """
    if not payload_paths:
        raise _invalid("no payload given")
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        if len(payload_paths) == 1 and payload_paths[0].is_file() and not payload_paths[0].is_symlink():
            payload = payload_paths[0]
            payload_file = payload.name
        else:
            payload = Path(scratch) / TREE_PAYLOAD
            payload_file = TREE_PAYLOAD
            _write_tree(payload_paths, payload)
        length, sha256 = _file_digest(payload)
        sbom = sbom_path.read_bytes() if sbom_path else None
        release: dict[str, Any] = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "release_counter": release_counter,
            "module": module,
            "device_types": device_types,
            "depends": depends,
            "provides": provides,
            "payload": {"path": PAYLOAD_DIR + payload_file, "length": length, "sha256": sha256},
            "sbom": {"length": len(sbom), "sha256": hashlib.sha256(sbom).hexdigest()} if sbom else None,
        }
        validate_release(release)
        partial = Path(scratch) / "artifact.fkr"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, RELEASE_MEMBER, _json_bytes(release))
            with payload.open("rb") as source:
                tar.addfile(_tar_info(PAYLOAD_DIR + payload_file, length), source)
            if sbom is not None:
                _add_bytes(tar, SBOM_MEMBER, sbom)
        os.replace(partial, out_path)
    return release


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _require(condition: bool, detail: str) -> None:
    if not condition:
        raise _invalid(f"release.json: {detail}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and NAME_RE.fullmatch(k) for k, v in value.items()
    )


def validate_release(release: Any) -> None:
    """Raise ArtifactError unless `release` is a well-formed release.json of the contract."""
    _require(isinstance(release, dict), "not a JSON object")
    _require(set(release) == RELEASE_KEYS, f"expected exactly the fields {sorted(RELEASE_KEYS)}")
    _require(release["format"] == FORMAT, f"format must be {FORMAT}")
    for field in ("name", "version"):
        value = release[field]
        _require(
            isinstance(value, str) and bool(NAME_RE.fullmatch(value)),
            f"{field}: 1-64 of A-Z a-z 0-9 . _ + -, the first a letter or digit",
        )
    # /api/v1/releases/uploads/{id} is the upload route: a release of that name could not be deleted.
    _require(release["name"] not in RESERVED_NAMES, f"name: {', '.join(sorted(RESERVED_NAMES))} is reserved")
    _require(_is_count(release["release_counter"]), "release_counter: an integer >= 0")
    module = release["module"]
    _require(
        isinstance(module, str) and (module in MODULES or bool(CUSTOM_MODULE_RE.fullmatch(module))),
        f"module: one of {', '.join(MODULES)} or x-<custom>",
    )
    types = release["device_types"]
    _require(isinstance(types, list), "device_types: a list")
    if not types:
        raise ArtifactError("missing_device_type", "the release names no device type")
    _require(
        all(isinstance(t, str) and NAME_RE.fullmatch(t) for t in types) and len(set(types)) == len(types),
        "device_types: distinct names of 1-64 of A-Z a-z 0-9 . _ + -",
    )
    _require(_is_str_map(release["depends"]), "depends: an object of name → string")
    _require(_is_str_map(release["provides"]), "provides: an object of name → string")
    payload = release["payload"]
    _require(
        isinstance(payload, dict) and set(payload) == {"path", "length", "sha256"},
        "payload: path, length, sha256",
    )
    path = payload["path"]
    _require(
        isinstance(path, str)
        and path.startswith(PAYLOAD_DIR)
        and bool(FILE_RE.fullmatch(path[len(PAYLOAD_DIR) :])),
        "payload.path: payload/<file>",
    )
    _require(_is_count(payload["length"]), "payload.length: an integer >= 0")
    _require(
        isinstance(payload["sha256"], str) and bool(SHA256_RE.fullmatch(payload["sha256"])), "payload.sha256"
    )
    sbom = release["sbom"]
    _require(
        sbom is None
        or (
            isinstance(sbom, dict)
            and set(sbom) == {"length", "sha256"}
            and _is_count(sbom["length"])
            and isinstance(sbom["sha256"], str)
            and bool(SHA256_RE.fullmatch(sbom["sha256"]))
        ),
        "sbom: null or {length, sha256}",
    )


def _members(tar: tarfile.TarFile, file_size: int) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    for info in tar:
        name = info.name
        if name in members:
            raise _invalid(f"member {name!r} appears twice")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise _invalid(f"member {name!r} is not a regular file")
        allowed = name in (RELEASE_MEMBER, SBOM_MEMBER, TARGETS_MEMBER) or (
            name.startswith(PAYLOAD_DIR) and FILE_RE.fullmatch(name[len(PAYLOAD_DIR) :]) is not None
        )
        if not allowed:
            raise _invalid(f"unexpected member {name!r}")
        if info.offset_data + info.size > file_size:
            raise _invalid(f"member {name!r} extends past the end of the file")
        members[name] = info
    return members


def _read_member(source: BinaryIO, info: tarfile.TarInfo) -> bytes:
    if info.size > MAX_JSON_BYTES:
        raise _invalid(f"member {info.name!r} is larger than {MAX_JSON_BYTES} bytes")
    source.seek(info.offset_data)
    return source.read(info.size)


def read_artifact(path: Path, *, max_bytes: int) -> Artifact:
    """Read and check an artifact's structure and release.json, without extracting anything.

    `max_bytes` bounds the payload (payload_too_large); the payload's hash is not computed here.
    """
    try:
        file_size = path.stat().st_size
        with path.open("rb") as source, tarfile.open(fileobj=source, mode="r:") as tar:
            members = _members(tar, file_size)
            payloads = [name for name in members if name.startswith(PAYLOAD_DIR)]
            if RELEASE_MEMBER not in members:
                raise _invalid("release.json is missing")
            if len(payloads) != 1:
                raise _invalid(f"expected one payload member, found {len(payloads)}")
            try:
                release_json = _read_member(source, members[RELEASE_MEMBER])
                release = json.loads(release_json)
            except ValueError as exc:
                raise _invalid(f"release.json is not JSON: {exc}") from exc
            validate_release(release)
            payload = members[payloads[0]]
            if release["payload"]["path"] != payload.name:
                raise _invalid(
                    f"release.json names payload {release['payload']['path']}, the file holds {payload.name}"
                )
            if payload.size > max_bytes:
                raise ArtifactError(
                    "payload_too_large", f"the payload is {payload.size} bytes, over {max_bytes}"
                )
            sbom = _read_member(source, members[SBOM_MEMBER]) if SBOM_MEMBER in members else None
            targets = _read_member(source, members[TARGETS_MEMBER]) if TARGETS_MEMBER in members else None
    except tarfile.TarError as exc:
        raise _invalid(f"not a tar file: {exc}") from exc
    except OSError as exc:
        raise _invalid(f"cannot read {path}: {exc}") from exc
    declared = release["sbom"]
    if (sbom is None) != (declared is None):
        raise _invalid("release.json and sbom.json disagree on whether there is an SBOM")
    if sbom is not None and (len(sbom), hashlib.sha256(sbom).hexdigest()) != (
        declared["length"],
        declared["sha256"],
    ):
        raise _invalid("sbom.json does not match the length and sha256 in release.json")
    return Artifact(
        path=path,
        release=release,
        release_json=release_json,
        payload_file=payload.name[len(PAYLOAD_DIR) :],
        payload_offset=payload.offset_data,
        payload_length=payload.size,
        sbom=sbom,
        targets_json=targets,
    )


def write_targets(artifact: Artifact, targets_json: bytes) -> Artifact:
    """Add or replace metadata/targets.json: a new file beside the old one, renamed over it."""
    path = artifact.path
    fd, partial_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as out, path.open("rb") as source:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, RELEASE_MEMBER, artifact.release_json)
                source.seek(artifact.payload_offset)
                tar.addfile(_tar_info(PAYLOAD_DIR + artifact.payload_file, artifact.payload_length), source)
                if artifact.sbom is not None:
                    _add_bytes(tar, SBOM_MEMBER, artifact.sbom)
                _add_bytes(tar, TARGETS_MEMBER, targets_json)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return read_artifact(path, max_bytes=artifact.payload_length)

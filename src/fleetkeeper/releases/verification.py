"""Server side: verify an uploaded release before anything of it is kept.

The checks run from the cheapest and most fundamental to the payload hash, so that each bad
input is refused with its own problem code: structure (read_artifact), signatures, version,
expiry, the target itself, then the payload's size, length and hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from fleetkeeper.releases.artifact import Artifact
from fleetkeeper.releases.errors import ReleaseRefused
from fleetkeeper.releases.signatures import signature_problem
from fleetkeeper.releases.signing import fleetkeeper_custom


@dataclass(frozen=True)
class VerifiedRelease:
    targets: Metadata[Targets]
    target: TargetFile
    signer_keyids: list[str]
    manifest: dict[str, Any]


def _parse_targets(artifact: Artifact) -> Metadata[Targets]:
    if artifact.targets_json is None:
        raise ReleaseRefused("invalid_artifact", "the artifact is not signed (no metadata/targets.json)")
    try:
        metadata = Metadata[Targets].from_bytes(artifact.targets_json)
    except Exception as exc:
        raise ReleaseRefused("invalid_artifact", f"metadata/targets.json is not TUF metadata: {exc}") from exc
    if not isinstance(metadata.signed, Targets):
        raise ReleaseRefused("invalid_artifact", "metadata/targets.json is not targets metadata")
    return metadata


def _check_target(artifact: Artifact, targets: Targets) -> TargetFile:
    target = targets.targets.get(artifact.target_path)
    if target is None:
        raise ReleaseRefused("invalid_artifact", f"the signed targets do not list {artifact.target_path}")
    custom = target.custom.get("fleetkeeper") if isinstance(target.custom, dict) else None
    if custom != fleetkeeper_custom(artifact.release):
        raise ReleaseRefused("invalid_artifact", "the signed custom.fleetkeeper does not match release.json")
    if "sha256" not in target.hashes:
        raise ReleaseRefused("invalid_artifact", "the signed target has no sha256")
    return target


def verify_release(
    artifact: Artifact,
    root: Metadata[Root],
    current_targets: Metadata[Targets],
    *,
    max_bytes: int,
    now: datetime,
) -> VerifiedRelease:
    """Raise ReleaseRefused(code, detail) unless the release may be accepted as targets vN+1."""
    if not artifact.release["device_types"]:
        raise ReleaseRefused("missing_device_type", "the release names no device type")
    metadata = _parse_targets(artifact)
    problem = signature_problem(root.signed, "targets", metadata)
    if problem:
        raise ReleaseRefused(*problem)
    targets = metadata.signed
    if targets.version <= current_targets.signed.version:
        raise ReleaseRefused(
            "stale_metadata_version",
            f"targets v{targets.version} is not newer than the current v{current_targets.signed.version}",
        )
    if targets.is_expired(now):
        raise ReleaseRefused("metadata_expired", f"targets v{targets.version} expired at {targets.expires}")
    target = _check_target(artifact, targets)
    if max(target.length, artifact.payload_length) > max_bytes:
        raise ReleaseRefused("payload_too_large", f"the payload is over the {max_bytes} bytes allowed")
    if artifact.payload_length != target.length:
        raise ReleaseRefused(
            "payload_length_mismatch",
            f"the payload is {artifact.payload_length} bytes, signed {target.length}",
        )
    if artifact.payload_sha256() != target.hashes["sha256"]:
        raise ReleaseRefused("payload_hash_mismatch", "the payload's sha256 is not the signed one")
    declared = artifact.release["payload"]
    if (declared["length"], declared["sha256"]) != (target.length, target.hashes["sha256"]):
        raise ReleaseRefused(
            "invalid_artifact", "release.json's payload length or sha256 is not the signed one"
        )
    signer_keyids = sorted(set(metadata.signatures) & set(root.signed.roles["targets"].keyids))
    return VerifiedRelease(
        targets=metadata, target=target, signer_keyids=signer_keyids, manifest=artifact.release
    )

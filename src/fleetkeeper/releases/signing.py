"""`release sign`: targets vN+1 with this release's target, signed offline, written into the artifact."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, TargetFile, Targets

from fleetkeeper.releases.artifact import Artifact, read_artifact, write_targets
from fleetkeeper.releases.errors import ArtifactError
from fleetkeeper.releases.keys import load_role_signers

# Signing is offline and the engineer chose the file: no size limit beyond what the disk holds.
UNBOUNDED = 1 << 62


def fleetkeeper_custom(release: dict[str, Any]) -> dict[str, Any]:
    """The target's custom.fleetkeeper, from release.json."""
    fields = ("name", "version", "release_counter", "module", "device_types", "depends", "provides")
    custom = {field: release[field] for field in fields}
    custom["sbom_sha256"] = release["sbom"]["sha256"] if release["sbom"] else None
    return custom


def release_target(artifact: Artifact) -> TargetFile:
    """The TUF target for the artifact's payload, hashed here rather than trusted from release.json."""
    sha256 = artifact.payload_sha256()
    declared = artifact.release["payload"]
    if (artifact.payload_length, sha256) != (declared["length"], declared["sha256"]):
        raise ArtifactError(
            "invalid_artifact", "the payload does not match the length and sha256 in release.json"
        )
    return TargetFile(
        length=artifact.payload_length,
        hashes={"sha256": sha256},
        path=artifact.target_path,
        unrecognized_fields={"custom": {"fleetkeeper": fleetkeeper_custom(artifact.release)}},
    )


def _next_targets(current: Targets, target: TargetFile, expires: datetime) -> Targets:
    signed = Metadata[Targets].from_bytes(Metadata(current).to_bytes()).signed
    signed.version += 1
    signed.expires = expires
    signed.targets[target.path] = target
    return signed


def _already_signed(artifact: Artifact, current: Targets, target: TargetFile) -> Metadata[Targets] | None:
    """The artifact's targets metadata when it is this very release's vN+1 (a second engineer signs)."""
    if artifact.targets_json is None:
        return None
    try:
        existing = Metadata[Targets].from_bytes(artifact.targets_json)
    except Exception:
        return None
    if not isinstance(existing.signed, Targets):
        return None
    # Same content apart from the expiry the first engineer chose: then their signatures stay valid.
    expected = _next_targets(current, target, existing.signed.expires)
    return existing if existing.signed == expected else None


def sign_release(
    artifact_path: Path, keys_dir: Path, current_targets: Metadata[Targets], expires: datetime
) -> Metadata[Targets]:
    """Sign the artifact's release into targets vN+1 with the targets keys in `keys_dir`.

    When the artifact already holds this vN+1, its signed content is kept and signatures merged.
    """
    artifact = read_artifact(artifact_path, max_bytes=UNBOUNDED)
    _, signers = load_role_signers(keys_dir, "targets")
    if not signers:
        raise ArtifactError("no_keys", f"{keys_dir} holds none of the targets keys")
    target = release_target(artifact)
    metadata = _already_signed(artifact, current_targets.signed, target)
    if metadata is None:
        metadata = Metadata(_next_targets(current_targets.signed, target, expires))
    for signer in signers:
        metadata.sign(signer, append=True)
    write_targets(artifact, metadata.to_bytes())
    return metadata

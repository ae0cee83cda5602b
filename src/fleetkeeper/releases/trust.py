"""Trust on the server: the roots and first targets signed offline, root rotation, and the checks
the server makes before it accepts either (docs/software-trust.md, "Trust on the server")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, Root, Targets

from fleetkeeper.releases.errors import TrustError
from fleetkeeper.releases.keys import load_role_signers, role_public_keys
from fleetkeeper.releases.signatures import signature_problem

ONLINE_KEY_NAMES = ("snapshot", "timestamp", "director_targets", "director_snapshot", "director_timestamp")
IMAGE_ONLINE_ROLES = {"snapshot": "snapshot", "timestamp": "timestamp"}
DIRECTOR_ONLINE_ROLES = {
    "targets": "director_targets",
    "snapshot": "director_snapshot",
    "timestamp": "director_timestamp",
}


@dataclass(frozen=True)
class InitialTrust:
    root: Metadata[Root]
    targets: Metadata[Targets]
    director_root: Metadata[Root]


def online_keys_from_json(data: Any) -> dict[str, Key]:
    """The server's online keys from `GET /api/v1/repository/online-keys`."""
    try:
        return {
            name: Key.from_dict(data[name]["keyid"], dict(data[name]["public"])) for name in ONLINE_KEY_NAMES
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise TrustError("invalid_metadata", f"malformed online keys: {exc}") from exc


def image_online_keys(online_keys: dict[str, Key]) -> dict[str, Key]:
    """Role name → key the image repository's root must name for its online roles."""
    return {role: online_keys[name] for role, name in IMAGE_ONLINE_ROLES.items()}


def director_online_keys(online_keys: dict[str, Key]) -> dict[str, Key]:
    """Role name → key the director root must name for its (all online) roles."""
    return {role: online_keys[name] for role, name in DIRECTOR_ONLINE_ROLES.items()}


def _new_root(keys_dir: Path, delegated: dict[str, tuple[int, list[Key]]], expires: datetime) -> Root:
    root = Root(version=1, expires=expires, consistent_snapshot=True)
    for role, (threshold, keys) in {"root": role_public_keys(keys_dir, "root"), **delegated}.items():
        for key in keys:
            root.add_key(key, role)
        root.roles[role].threshold = threshold
    return root


def _sign(metadata: Metadata[Any], signers: list[Signer]) -> None:
    for signer in signers:
        metadata.sign(signer, append=True)


def _require_signed(delegator: Root, role: str, metadata: Metadata[Any]) -> None:
    problem = signature_problem(delegator, role, metadata)
    if problem:
        raise TrustError(*problem)


def build_initial_trust(keys_dir: Path, online_keys: dict[str, Key], expires: datetime) -> InitialTrust:
    """Root v1, empty targets v1 and director root v1, signed with the offline keys in `keys_dir`."""
    targets_keys = role_public_keys(keys_dir, "targets")
    online = {role: (1, [key]) for role, key in image_online_keys(online_keys).items()}
    director = {role: (1, [key]) for role, key in director_online_keys(online_keys).items()}
    root = Metadata(_new_root(keys_dir, {"targets": targets_keys, **online}, expires))
    director_root = Metadata(_new_root(keys_dir, director, expires))
    targets = Metadata(Targets(version=1, expires=expires))
    _, root_signers = load_role_signers(keys_dir, "root")
    _, targets_signers = load_role_signers(keys_dir, "targets")
    _sign(root, root_signers)
    _sign(director_root, root_signers)
    _sign(targets, targets_signers)
    for signed_root in (root, director_root):
        _require_signed(signed_root.signed, "root", signed_root)
    _require_signed(root.signed, "targets", targets)
    return InitialTrust(root=root, targets=targets, director_root=director_root)


def rotate_root(
    current: Metadata[Root], old_keys_dir: Path, new_keys_dir: Path, expires: datetime
) -> Metadata[Root]:
    """Root vN+1 naming the root keys of `new_keys_dir`, signed by the old threshold and the new one."""
    signed = Metadata[Root].from_bytes(current.to_bytes()).signed
    signed.version += 1
    signed.expires = expires
    for keyid in list(signed.roles["root"].keyids):
        signed.revoke_key(keyid, "root")
    threshold, new_keys = role_public_keys(new_keys_dir, "root")
    for key in new_keys:
        signed.add_key(key, "root")
    signed.roles["root"].threshold = threshold
    new = Metadata(signed)
    _sign(new, load_role_signers(old_keys_dir, "root")[1])
    _sign(new, load_role_signers(new_keys_dir, "root")[1])
    check_root_update(current, new)
    return new


def parse_root(data: bytes | dict[str, Any]) -> Metadata[Root]:
    """A root from its JSON, as a server receives it; invalid_metadata when it is not one."""
    return _parse(data, Root)


def parse_targets(data: bytes | dict[str, Any]) -> Metadata[Targets]:
    return _parse(data, Targets)


def _parse(data: bytes | dict[str, Any], kind: type[Root] | type[Targets]) -> Metadata[Any]:
    try:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        metadata = Metadata[Any].from_bytes(raw)
    except Exception as exc:
        raise TrustError("invalid_metadata", f"not TUF {kind.type} metadata: {exc}") from exc
    if not isinstance(metadata.signed, kind):
        raise TrustError("invalid_metadata", f"expected {kind.type} metadata, got {metadata.signed.type}")
    return metadata


def _check_unexpired(metadata: Metadata[Any], now: datetime | None) -> None:
    if metadata.signed.is_expired(now or datetime.now(UTC)):
        raise TrustError("metadata_expired", f"{metadata.signed.type} v{metadata.signed.version} has expired")


def _check_online_keys(root: Root, expected: dict[str, Key], which: str) -> None:
    for role, key in expected.items():
        delegated = root.roles[role]
        named = [root.keys[keyid] for keyid in delegated.keyids]
        if delegated.threshold != 1 or len(named) != 1 or named[0].keyval != key.keyval:
            raise TrustError("wrong_online_keys", f"the {which} {role} role must be the server's online key")


def check_initial_trust(
    root: Metadata[Root],
    targets: Metadata[Targets],
    director_root: Metadata[Root],
    online_keys: dict[str, Key],
    now: datetime | None = None,
) -> None:
    """Raise TrustError unless the initial trust is v1, self-consistent and names our online keys."""
    for metadata in (root, targets, director_root):
        if metadata.signed.version != 1:
            raise TrustError("wrong_version", f"initial {metadata.signed.type} must be version 1")
        _check_unexpired(metadata, now)
    for signed_root in (root, director_root):
        if not signed_root.signed.consistent_snapshot:
            raise TrustError("invalid_metadata", "roots must use consistent snapshots")
        _require_signed(signed_root.signed, "root", signed_root)
    _require_signed(root.signed, "targets", targets)
    _check_online_keys(root.signed, image_online_keys(online_keys), "image repository")
    _check_online_keys(director_root.signed, director_online_keys(online_keys), "director")


def check_root_update(
    current: Metadata[Root],
    new: Metadata[Root],
    online_keys: dict[str, Key] | None = None,
    now: datetime | None = None,
) -> None:
    """Raise TrustError unless `new` is the next root, signed by the current threshold and its own.

    `online_keys` (role name → key, see image_online_keys/director_online_keys): when given, the
    new root must still name them, or the server could no longer sign what devices accept.
    """
    if new.signed.version != current.signed.version + 1:
        raise TrustError(
            "wrong_version",
            f"root v{new.signed.version} does not follow the current v{current.signed.version}",
        )
    _check_unexpired(new, now)
    _require_signed(current.signed, "root", new)
    _require_signed(new.signed, "root", new)
    if online_keys is not None:
        _check_online_keys(new.signed, online_keys, "new root's")

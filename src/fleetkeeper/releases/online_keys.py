"""The server's online TUF keys: snapshot and timestamp of the image repository, and the director's three.

They live as Ed25519 private keys (PEM PKCS#8, mode 0600) in one directory, `<data_dir>/pki/tuf/` by default,
named as docs/software-trust.md says: `snapshot.key`, `timestamp.key`, `director-targets.key`,
`director-snapshot.key`, `director-timestamp.key`. They are handed out as securesystemslib signers, so a
signer backed by an HSM or a KMS can take a file key's place without touching the signing code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

# These packages re-export their public API without __all__, which mypy --strict reads as private.
from securesystemslib.signer import CryptoSigner, Key, Signer

from fleetkeeper.core.pki import write_private_key

SNAPSHOT: Final = "snapshot"
TIMESTAMP: Final = "timestamp"
DIRECTOR_TARGETS: Final = "director_targets"
DIRECTOR_SNAPSHOT: Final = "director_snapshot"
DIRECTOR_TIMESTAMP: Final = "director_timestamp"

ONLINE_ROLES: Final[tuple[str, ...]] = (
    SNAPSHOT,
    TIMESTAMP,
    DIRECTOR_TARGETS,
    DIRECTOR_SNAPSHOT,
    DIRECTOR_TIMESTAMP,
)


class OnlineKeysError(Exception):
    """The key directory cannot be used as it is; the message says what an operator has to fix."""


def key_file_name(role: str) -> str:
    """The contract names files with hyphens (`director-targets.key`) and roles with underscores."""
    _check_role(role)
    return role.replace("_", "-") + ".key"


class OnlineKeys:
    """One signer per online role; the public halves are what the offline roots must name."""

    def __init__(self, signers: Mapping[str, Signer]) -> None:
        missing = [role for role in ONLINE_ROLES if role not in signers]
        unknown = sorted(set(signers) - set(ONLINE_ROLES))
        if missing or unknown:
            raise ValueError(f"online keys: missing roles {missing}, unknown roles {unknown}")
        self._signers = dict(signers)

    def signer(self, role: str) -> Signer:
        _check_role(role)
        return self._signers[role]

    def key(self, role: str) -> Key:
        return self.signer(role).public_key

    def public_keys(self) -> dict[str, dict[str, Any]]:
        """The body of GET /api/v1/repository/online-keys: `{role: {"keyid", "public"}}`."""
        return {
            role: {"keyid": self.key(role).keyid, "public": self.key(role).to_dict()} for role in ONLINE_ROLES
        }


def load_or_create_online_keys(directory: Path, *, create: bool = True) -> OnlineKeys:
    """Load the five online keys from `directory`, or create all of them when none exists (unless
    `create` is False: then none is an error too).

    A directory holding only some of them is refused rather than completed: the missing ones were lost or
    never copied, and a new key would not be the one the offline-signed roots name, so silently making one
    would leave devices refusing every metadata file it signs.
    """
    paths = {role: directory / key_file_name(role) for role in ONLINE_ROLES}
    present = [role for role, path in paths.items() if path.exists()]
    if present and len(present) < len(ONLINE_ROLES):
        missing = [paths[role].name for role in ONLINE_ROLES if role not in present]
        found = [paths[role].name for role in present]
        raise OnlineKeysError(
            f"{directory} holds only some of the online TUF keys (found {found}, missing {missing}); "
            "restore the missing files from a backup, or move all of them away to start a new set "
            "(the repository and director roots must then be re-signed with the new keys)"
        )
    if not present and not create:
        raise OnlineKeysError(f"{directory} holds no online TUF keys: the server's main process makes them")
    if not present:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in paths.values():
            write_private_key(path, ed25519.Ed25519PrivateKey.generate())
        _fsync_directory(directory)
    return OnlineKeys({role: _load_signer(path) for role, path in paths.items()})


def _load_signer(path: Path) -> CryptoSigner:
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as error:
        raise OnlineKeysError(f"{path}: not a PEM PKCS#8 private key without a password ({error})") from error
    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise OnlineKeysError(f"{path}: expected an Ed25519 private key")
    return CryptoSigner(private_key)


def _fsync_directory(directory: Path) -> None:
    # The renames that published the key files survive a power cut only once the directory is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_role(role: str) -> None:
    if role not in ONLINE_ROLES:
        raise KeyError(f"not an online role: {role!r} (expected one of {', '.join(ONLINE_ROLES)})")

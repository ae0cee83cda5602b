"""The release engineer's offline keys: root and targets (release) keys, described by keys.json.

keys.json holds public keys and signer URIs; `file2:` URIs are relative to the key directory so
the directory can be moved (or copied to a second engineer's machine) as a whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Key, Signer

from fleetkeeper.releases.errors import KeysError

KEYS_FILE = "keys.json"
OFFLINE_ROLES = ("root", "targets")
FILE_SCHEME = "file2:"


def init_keys(directory: Path, threshold: int, count: int) -> dict[str, Any]:
    """Create `count` Ed25519 root and targets keys with `threshold`; return the keys.json content."""
    if not 1 <= threshold <= count:
        raise KeysError("invalid_keys", f"threshold {threshold} must be between 1 and count {count}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = [p.name for p in directory.iterdir() if p.name == KEYS_FILE or p.suffix == ".key"]
    if existing:
        raise KeysError("keys_exist", f"{directory} already holds keys ({', '.join(sorted(existing))})")
    description: dict[str, Any] = {}
    for role in OFFLINE_ROLES:
        entries = []
        for index in range(1, count + 1):
            signer = CryptoSigner.generate_ed25519()
            file_name = f"{role}-{index}.key"
            _write_private(directory / file_name, signer.private_bytes)
            entries.append(
                {
                    "keyid": signer.public_key.keyid,
                    "public": signer.public_key.to_dict(),
                    "uri": f"{FILE_SCHEME}{file_name}",
                }
            )
        description[role] = {"threshold": threshold, "keys": entries}
    # keys.json last: a directory without it is an interrupted init, never a usable half.
    _write_private(directory / KEYS_FILE, (json.dumps(description, indent=2) + "\n").encode(), mode=0o644)
    return description


def _write_private(path: Path, content: bytes, mode: int = 0o600) -> None:
    # O_EXCL and the mode at creation: the private key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())


def read_keys_file(directory: Path) -> dict[str, Any]:
    path = directory / KEYS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeysError("invalid_keys", f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise KeysError("invalid_keys", f"{path} is not a JSON object")
    return data


def _role_entries(directory: Path, role: str) -> tuple[int, list[tuple[Key, str]]]:
    data = read_keys_file(directory)
    try:
        section = data[role]
        threshold = section["threshold"]
        entries = [
            (Key.from_dict(entry["keyid"], dict(entry["public"])), entry["uri"]) for entry in section["keys"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise KeysError(
            "invalid_keys", f"{directory / KEYS_FILE}: bad entry for role {role!r}: {exc}"
        ) from exc
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= len(entries):
        raise KeysError("invalid_keys", f"{directory / KEYS_FILE}: bad threshold for role {role!r}")
    return threshold, entries


def role_public_keys(directory: Path, role: str) -> tuple[int, list[Key]]:
    """The threshold and public keys keys.json names for `role`."""
    threshold, entries = _role_entries(directory, role)
    return threshold, [key for key, _ in entries]


def load_role_signers(directory: Path, role: str) -> tuple[int, list[Signer]]:
    """The threshold and the signers available here for `role`.

    A `file2:` key whose file is absent is skipped: engineers hold different keys of one role and
    each signs with the ones they have. Any other scheme is loaded, and its errors are raised.
    """
    threshold, entries = _role_entries(directory, role)
    signers: list[Signer] = []
    for key, uri in entries:
        if uri.startswith(FILE_SCHEME):
            path = directory / uri.removeprefix(FILE_SCHEME)
            if not path.is_file():
                continue
            uri = f"{FILE_SCHEME}{path.resolve()}"
        try:
            signers.append(Signer.from_priv_key_uri(uri, key))
        except Exception as exc:
            raise KeysError("invalid_keys", f"cannot load the {role} key {key.keyid[:12]}: {exc}") from exc
    return threshold, signers

"""Retention checkpoints: the Ed25519 key that signs them and the exact bytes it signs."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetkeeper.audit.chain import canonical_json, format_time
from fleetkeeper.audit.models import AuditCheckpoint
from fleetkeeper.core.pki import write_private_key

KEY_FILE_NAME = "audit-checkpoint.key"


def checkpoint_key_path(data_dir: Path) -> Path:
    return data_dir / "pki" / KEY_FILE_NAME


def load_or_create_checkpoint_key(path: Path) -> Ed25519PrivateKey:
    """Blocking file I/O: for the CLI and start-up, not for the event loop."""
    if path.exists():
        return _load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
    write_private_key(staged, Ed25519PrivateKey.generate())
    try:
        # A hard link fails when the name exists: of two processes creating the key at once, one
        # wins and the other loads the winner's key instead of overwriting it.
        os.link(staged, path)
    except FileExistsError:
        pass
    finally:
        staged.unlink()
    return _load_private_key(path)


def load_checkpoint_public_key(path: Path) -> Ed25519PublicKey | None:
    """The public half of the signing key, or None when no key was ever created."""
    if not path.exists():
        return None
    return _load_private_key(path).public_key()


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: expected an Ed25519 private key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def signed_bytes(checkpoint: AuditCheckpoint) -> bytes:
    """Canonical JSON of every checkpoint field but `signature`."""
    payload = {
        "anchor_hash": checkpoint.anchor_hash,
        "created_at": format_time(checkpoint.created_at),
        "cutoff": format_time(checkpoint.cutoff),
        "deleted_count": checkpoint.deleted_count,
        "first_kept_seq": checkpoint.first_kept_seq,
        "id": checkpoint.id,
        "key_id": checkpoint.key_id,
    }
    return canonical_json(payload).encode("utf-8")


def sign(checkpoint: AuditCheckpoint, signer: Ed25519PrivateKey) -> str:
    return signer.sign(signed_bytes(checkpoint)).hex()


def signature_valid(checkpoint: AuditCheckpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(bytes.fromhex(checkpoint.signature), signed_bytes(checkpoint))
    except (InvalidSignature, ValueError):
        return False
    return True

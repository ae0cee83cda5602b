"""Where the device's private key lives, and the certificate and CA that go with it.

Everything else in the agent reaches the key only through `KeyStore`, so the key can move into
hardware without touching the enrollment or renewal code. A store keeps two key slots:

- the *current* key, which the device certificate names and which proves the device in mTLS;
- the *staged* key, made during a key rotation: it signs the rotation request while the current key
  still authenticates the connection, and replaces the current key (together with the new
  certificate) only once the server has issued a certificate for it.

`FileKeyStore` keeps PEM files in a directory. A TPM store (tpm2-pytss, or keys in TSS2 PEM files)
or a PKCS#11 store (python-pkcs11, an HSM or smart card) implements the same protocol: `sign` asks
the token, `public_key_pem` reads the token's public key, and `load_client_identity` configures the
TLS context so that the handshake is signed by the token (for OpenSSL 3, a provider such as
tpm2-openssl or pkcs11-provider made active in the OpenSSL configuration). See docs/agent.md.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import fsync_directory, write_atomic
from fleetkeeper_agent.keytypes import DEFAULT_KEY_TYPE, KEY_TYPES, KeyType

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class KeyStore(Protocol):
    """The device key (current and staged), its certificate, and the fleet CA.

    `staged=True` selects the key made by `stage_key` for a rotation; it never authenticates a connection.
    """

    def exists(self) -> bool:
        """Whether the current key exists."""
        ...

    def generate(self, key_type: KeyType = DEFAULT_KEY_TYPE) -> None:
        """Create the current key. Refuses (KeyExistsError) if there is one: only a rotation replaces it."""
        ...

    def key_type(self, *, staged: bool = False) -> KeyType: ...

    def public_key_pem(self, *, staged: bool = False) -> str:
        """The public key as a SubjectPublicKeyInfo PEM, as the device API expects."""
        ...

    def sign(self, data: bytes, *, staged: bool = False) -> bytes:
        """Ed25519: the plain signature; ECDSA P-256: ECDSA with SHA-256, DER-encoded."""
        ...

    def has_staged_key(self) -> bool: ...

    def stage_key(self, key_type: KeyType = DEFAULT_KEY_TYPE) -> None:
        """Create the staged key. Refuses if one exists: a rotation the server has not answered yet must
        go on with the same key, or an approval the operator gave would be for a key that is gone."""
        ...

    def commit_staged_key(self, certificate_pem: bytes, ca_pem: bytes) -> None:
        """Make the staged key current, with its certificate, as one step a crash cannot split."""
        ...

    def discard_staged_key(self) -> None: ...

    def load_certificate(self) -> x509.Certificate | None: ...

    def load_ca_pem(self) -> bytes | None: ...

    def store_certificate(self, certificate_pem: bytes, ca_pem: bytes) -> None:
        """Store a certificate for the current key, and the CA that issued it."""
        ...

    def load_client_identity(self, context: ssl.SSLContext) -> None:
        """Load the certificate and the current key into a TLS context for mTLS."""
        ...


class KeyExistsError(AgentError):
    def __init__(self, message: str) -> None:
        super().__init__("key_exists", message)


class FileKeyStore:
    """PEM files in one directory: `device.key` (0600), `device.crt`, `ca.crt`; during a rotation
    `device.key.new` (the staged key) and, for the instant of the swap, `device.crt.new`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key_path = directory / "device.key"
        self.staged_key_path = directory / "device.key.new"
        self.certificate_path = directory / "device.crt"
        self.pending_certificate_path = directory / "device.crt.new"
        self.ca_path = directory / "ca.crt"
        if directory.is_dir():
            self._finish_interrupted_commit()

    # --- keys -------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.key_path.exists()

    def generate(self, key_type: KeyType = DEFAULT_KEY_TYPE) -> None:
        if self.exists():
            raise KeyExistsError(f"{self.key_path} exists; a key is replaced only by rotate-key")
        self._create_key(self.key_path, key_type)

    def key_type(self, *, staged: bool = False) -> KeyType:
        return _key_type_of(self._private_key(staged))

    def public_key_pem(self, *, staged: bool = False) -> str:
        return _public_pem(self._private_key(staged).public_key()).decode()

    def sign(self, data: bytes, *, staged: bool = False) -> bytes:
        key = self._private_key(staged)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    def has_staged_key(self) -> bool:
        return self.staged_key_path.exists()

    def stage_key(self, key_type: KeyType = DEFAULT_KEY_TYPE) -> None:
        if self.has_staged_key():
            raise KeyExistsError(f"{self.staged_key_path} exists; the rotation in progress goes on with it")
        self._create_key(self.staged_key_path, key_type)

    def commit_staged_key(self, certificate_pem: bytes, ca_pem: bytes) -> None:
        certificate = _parse_certificate(certificate_pem)
        _require_matching_key(certificate, self._private_key(staged=True))
        write_atomic(self.ca_path, ca_pem)
        # device.crt.new is the journal of the swap: once it is on disk, _finish_interrupted_commit
        # completes the two renames below after a crash between them, whichever has happened.
        write_atomic(self.pending_certificate_path, certificate_pem)
        self._finish_interrupted_commit()

    def discard_staged_key(self) -> None:
        self.staged_key_path.unlink(missing_ok=True)
        fsync_directory(self.directory)

    # --- certificate and CA -----------------------------------------------------------------------

    def load_certificate(self) -> x509.Certificate | None:
        if not self.certificate_path.exists():
            return None
        return _parse_certificate(self.certificate_path.read_bytes())

    def load_ca_pem(self) -> bytes | None:
        return self.ca_path.read_bytes() if self.ca_path.exists() else None

    def store_certificate(self, certificate_pem: bytes, ca_pem: bytes) -> None:
        certificate = _parse_certificate(certificate_pem)
        _require_matching_key(certificate, self._private_key(staged=False))
        write_atomic(self.ca_path, ca_pem)
        write_atomic(self.certificate_path, certificate_pem)

    def load_client_identity(self, context: ssl.SSLContext) -> None:
        if not self.certificate_path.exists():
            raise AgentError("not_enrolled", f"{self.certificate_path} is missing; enroll first")
        context.load_cert_chain(self.certificate_path, self.key_path)

    # --- internals --------------------------------------------------------------------------------

    def _create_key(self, path: Path, key_type: KeyType) -> None:
        key: PrivateKey
        if key_type == "ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        elif key_type == "ecdsa-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise AgentError("invalid_key_type", f"{key_type!r}: expected one of {', '.join(KEY_TYPES)}")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            write_atomic(path, pem, mode=0o600, overwrite=False)
        except FileExistsError:
            raise KeyExistsError(f"{path} exists") from None

    def _private_key(self, staged: bool) -> PrivateKey:
        path = self.staged_key_path if staged else self.key_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            what = "no staged key" if staged else "no device key"
            raise AgentError("no_key", f"{what} ({path} is missing)") from None
        key = serialization.load_pem_private_key(data, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
        raise AgentError("invalid_key_type", f"{path}: neither an Ed25519 nor an ECDSA P-256 key")

    def _finish_interrupted_commit(self) -> None:
        if not self.pending_certificate_path.exists():
            return
        try:
            certificate = _parse_certificate(self.pending_certificate_path.read_bytes())
        except AgentError:
            certificate = None
        if certificate is not None and self.staged_key_path.exists():
            with contextlib.suppress(AgentError):
                _require_matching_key(certificate, self._private_key(staged=True))
                os.replace(self.staged_key_path, self.key_path)
                fsync_directory(self.directory)
        if certificate is not None and self.key_path.exists():
            with contextlib.suppress(AgentError):
                _require_matching_key(certificate, self._private_key(staged=False))
                os.replace(self.pending_certificate_path, self.certificate_path)
                fsync_directory(self.directory)
                return
        # A certificate for neither key is left over from an attempt that never got to the renames.
        self.pending_certificate_path.unlink(missing_ok=True)


def _key_type_of(key: PrivateKey) -> KeyType:
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "ecdsa-p256"


def _public_pem(key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _parse_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise AgentError("invalid_certificate", f"not a PEM certificate: {exc}") from None


def _require_matching_key(certificate: x509.Certificate, key: PrivateKey) -> None:
    certified = certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if certified != _public_pem(key.public_key()):
        raise AgentError("certificate_key_mismatch", "the certificate is not for this device's key")

"""X.509 helpers: the fleet CA (ECDSA P-256) and the certificates it issues."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = timedelta(days=3650)
SERVER_CERT_VALIDITY = timedelta(days=365)
CLOCK_SKEW = timedelta(minutes=5)

IssuablePublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
    """Written 0600 from the first byte: the file is created with that mode, then renamed into place."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_bytes_atomic(path, pem, mode=0o600)


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    write_bytes_atomic(path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)


def write_bytes_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an ECDSA private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _name(common_name: str, organization: str = "fleetkeeper") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alternative_names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


@dataclass
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name: str = "fleetkeeper fleet CA") -> CertificateAuthority:
        key = generate_private_key()
        now = datetime.now(UTC)
        name = _name(common_name)
        public_key = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate=certificate)

    def issue(
        self,
        public_key: IssuablePublicKey,
        common_name: str,
        *,
        client: bool,
        validity: timedelta,
        dns_names: list[str] | None = None,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        """A leaf certificate: for a device (client) or for a listener (server, with its names)."""
        start = not_before or datetime.now(UTC) - CLOCK_SKEW
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if dns_names:
            builder = builder.add_extension(_subject_alternative_names(dns_names), critical=False)
        return builder.sign(self.key, hashes.SHA256())


@dataclass(frozen=True)
class PkiPaths:
    """Where the embedded default keeps its CA and the device listener's certificate."""

    directory: Path

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def device_listener_key(self) -> Path:
        return self.directory / "device-listener.key"

    @property
    def device_listener_cert(self) -> Path:
        return self.directory / "device-listener.crt"

    @property
    def crl(self) -> Path:
        """The CA's revocation list, PEM: also usable as Mosquitto's crlfile."""
        return self.directory / "crl.pem"


def load_ca(paths: PkiPaths) -> CertificateAuthority:
    """The fleet CA kept in `paths` (FileNotFoundError when its key or certificate is missing)."""
    return CertificateAuthority(load_private_key(paths.ca_key), load_certificate(paths.ca_cert))


def load_or_create_ca(paths: PkiPaths) -> tuple[CertificateAuthority, bool]:
    """Returns the fleet CA, creating it on first start; the flag says whether it was created."""
    paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if paths.ca_key.exists() and paths.ca_cert.exists():
        return load_ca(paths), False
    if paths.ca_key.exists() or paths.ca_cert.exists():
        raise FileExistsError(
            f"{paths.directory} holds only one of ca.key and ca.crt; restore the other from backup"
        )
    ca = CertificateAuthority.create()
    write_private_key(paths.ca_key, ca.key)
    write_certificate(paths.ca_cert, ca.certificate)
    return ca, True


def ensure_device_listener_certificate(paths: PkiPaths, ca: CertificateAuthority, names: list[str]) -> None:
    """(Re)issue the device listener's certificate when missing, expiring, or for other names."""
    if paths.device_listener_cert.exists() and paths.device_listener_key.exists():
        current = load_certificate(paths.device_listener_cert)
        if _still_fits(current, ca, names):
            return
    key = generate_private_key()
    certificate = ca.issue(
        key.public_key(), names[0], client=False, validity=SERVER_CERT_VALIDITY, dns_names=names
    )
    write_private_key(paths.device_listener_key, key)
    write_certificate(paths.device_listener_cert, certificate)


def _still_fits(certificate: x509.Certificate, ca: CertificateAuthority, names: list[str]) -> bool:
    try:
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if certificate.not_valid_after_utc - datetime.now(UTC) < timedelta(days=30):
        return False
    try:
        present = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return present == _subject_alternative_names(names)

"""The device's identity over its life: enroll, renew the certificate, rotate the key, report inventory.

Each function does one exchange of docs/device-api.md and leaves the key store consistent whatever
the answer: a certificate is stored only after it is checked against the key, the device id and the CA.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from fleetkeeper_agent.client import DeviceClient, check_server_url, tls_context
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import write_atomic
from fleetkeeper_agent.inventory import limit_inventory
from fleetkeeper_agent.keystore import KeyStore
from fleetkeeper_agent.keytypes import DEFAULT_KEY_TYPE, KeyType
from fleetkeeper_agent.signing import signed_envelope

log = logging.getLogger(__name__)

ENROLL_PATH = "/device/v1/enroll"
RENEW_PATH = "/device/v1/certificate/renew"
ROTATE_PATH = "/device/v1/certificate/rotate"
INVENTORY_PATH = "/device/v1/inventory"

DEVICE_TYPE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAX_SERIAL = 128
MAX_ATTRIBUTES = 50
# Bounds on the server's retry_after, so that a wrong value neither hammers it nor stalls the device.
MIN_RETRY_SECONDS = 1
MAX_RETRY_SECONDS = 3600
DEFAULT_RETRY_SECONDS = 30


@dataclass(frozen=True)
class DeviceIdentity:
    """What the device says about itself when it enrolls; checked against the contract's limits."""

    device_type: str
    serial: str | None = None
    mac: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not DEVICE_TYPE.fullmatch(self.device_type):
            raise ValueError("device type: 1 to 64 of A-Z a-z 0-9 . _ -")
        if self.serial is not None and not 1 <= len(self.serial) <= MAX_SERIAL:
            raise ValueError(f"serial: 1 to {MAX_SERIAL} characters")
        if self.mac is not None:
            mac = self.mac.lower().replace("-", ":")
            if not MAC.fullmatch(mac):
                raise ValueError("mac: six hexadecimal pairs, like dc:a6:32:01:02:03")
            object.__setattr__(self, "mac", mac)
        if len(self.attributes) > MAX_ATTRIBUTES:
            raise ValueError(f"attributes: at most {MAX_ATTRIBUTES}")
        if not all(isinstance(value, str) for value in self.attributes.values()):
            raise ValueError("attributes: values are strings")

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"device_type": self.device_type}
        if self.serial is not None:
            payload["serial"] = self.serial
        if self.mac is not None:
            payload["mac"] = self.mac
        payload["attributes"] = dict(self.attributes)
        return payload


@dataclass(frozen=True)
class EnrollResult:
    device_id: str
    status: Literal["accepted", "pending"]
    not_after: datetime | None = None  # the certificate's expiry, once accepted
    retry_after: int | None = None  # what the server asked for, while pending


@dataclass(frozen=True)
class CertificateResult:
    device_id: str
    not_after: datetime


@dataclass(frozen=True)
class RotateResult:
    device_id: str
    status: Literal["rotated", "pending_approval"]
    not_after: datetime | None = None


# --- identity.json -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityState:
    """identity.json: which server this device belongs to and as whom."""

    server_url: str
    device_id: str
    device_type: str
    status: Literal["accepted", "pending"]

    FILE = "identity.json"

    @classmethod
    def load(cls, data_dir: Path) -> IdentityState | None:
        path = data_dir / cls.FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                server_url=str(raw["server_url"]),
                device_id=str(raw["device_id"]),
                device_type=str(raw["device_type"]),
                status="accepted" if raw.get("status") == "accepted" else "pending",
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise AgentError("invalid_state", f"{path}: {exc}") from None

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        write_atomic(data_dir / self.FILE, text.encode("utf-8"))


# --- enrollment ---------------------------------------------------------------------------------


def enroll(
    store: KeyStore,
    server_url: str,
    ca_path: Path,
    identity: DeviceIdentity,
    *,
    token: str | None = None,
    key_type: KeyType | None = None,
    wait: float = 0.0,
) -> EnrollResult:
    """Ask to join the fleet, polling while an operator decides, for at most `wait` seconds.

    A key is made on first use (`key_type`, Ed25519 by default) and reused afterwards: the server maps
    the same key to the same device, so enrolling again resumes a pending request or fetches the
    certificate again. On acceptance the certificate and the CA are in the store.
    """
    server_url = check_server_url(server_url)
    try:
        ca_pem = ca_path.read_bytes()
    except OSError as exc:
        raise AgentError("invalid_ca", f"cannot read {ca_path}: {exc.strerror}") from None
    if not store.exists():
        store.generate(key_type or DEFAULT_KEY_TYPE)
    elif key_type is not None and store.key_type() != key_type:
        raise AgentError(
            "key_exists", f"the device already has an {store.key_type()} key; rotate-key replaces it"
        )
    payload = enrollment_payload(store, identity, token)
    deadline = time.monotonic() + max(wait, 0.0)
    with DeviceClient(server_url, tls_context(ca_pem)) as client:
        while True:
            # A fresh envelope per attempt: the server refuses a nonce it has seen.
            answer = client.call("POST", ENROLL_PATH, signed_envelope(payload, store.sign))
            device_id = _string(answer.body, "device_id")
            if answer.status == 200 and answer.body.get("status") == "accepted":
                not_after = store_issued(store, answer.body, device_id, staged=False)
                return EnrollResult(device_id, "accepted", not_after=not_after)
            if answer.status != 202 or answer.body.get("status") != "pending":
                raise AgentError("invalid_response", f"enroll: unexpected HTTP {answer.status} answer")
            retry_after = bounded_retry_after(answer.body.get("retry_after"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return EnrollResult(device_id, "pending", retry_after=retry_after)
            delay = min(retry_after, remaining)
            log.info("enrollment of %s is pending approval; asking again in %.0f s", device_id, delay)
            time.sleep(delay)


def enrollment_payload(store: KeyStore, identity: DeviceIdentity, token: str | None) -> dict[str, Any]:
    """What an enrollment signs (without timestamp and nonce: `signed_envelope` adds fresh ones)."""
    payload: dict[str, Any] = {
        "type": "fleetkeeper.enroll.v1",
        "identity": identity.to_payload(),
        "public_key": store.public_key_pem(),
    }
    if token is not None:
        payload["enrollment_token"] = token
    return payload


def bounded_retry_after(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_RETRY_SECONDS
    return int(min(max(value, MIN_RETRY_SECONDS), MAX_RETRY_SECONDS))


# --- certificates ---------------------------------------------------------------------------------


def renew(store: KeyStore, server_url: str) -> CertificateResult:
    """Get a new certificate for the current key (mTLS with the current certificate)."""
    device_id, ca_pem = _enrolled(store)
    with DeviceClient(server_url, tls_context(ca_pem, store)) as client:
        answer = client.call("POST", RENEW_PATH)
    not_after = store_issued(store, answer.body, device_id, staged=False)
    return CertificateResult(device_id, not_after)


def renewal_due(
    certificate: x509.Certificate, *, within: timedelta | None = None, now: datetime | None = None
) -> bool:
    """Whether less than `within` is left, or by default less than a third of the validity."""
    now = now or datetime.now(UTC)
    left = certificate.not_valid_after_utc - now
    if within is None:
        within = (certificate.not_valid_after_utc - certificate.not_valid_before_utc) / 3
    return left < within


def rotate_key(store: KeyStore, server_url: str, *, key_type: KeyType | None = None) -> RotateResult:
    """Replace the device key: a new key signs the request, the old certificate authenticates it.

    The new key is staged first and becomes current only with its certificate. While the server's
    answer is "pending approval" (or the exchange fails) the staged key is kept, and the next call
    sends the same key again, which is how the certificate is fetched once an operator approved.
    """
    device_id, ca_pem = _enrolled(store)
    if not store.has_staged_key():
        store.stage_key(key_type or store.key_type())
    elif key_type is not None and store.key_type(staged=True) != key_type:
        log.warning("a %s key is already staged for rotation; going on with it", store.key_type(staged=True))
    payload = {
        "type": "fleetkeeper.rotate.v1",
        "device_id": device_id,
        "public_key": store.public_key_pem(staged=True),
    }
    envelope = signed_envelope(payload, lambda data: store.sign(data, staged=True))
    with DeviceClient(server_url, tls_context(ca_pem, store)) as client:
        answer = client.call("POST", ROTATE_PATH, envelope)
    if answer.status == 202 and answer.body.get("status") == "pending_approval":
        return RotateResult(device_id, "pending_approval")
    if answer.status != 200:
        raise AgentError("invalid_response", f"rotate: unexpected HTTP {answer.status} answer")
    not_after = store_issued(store, answer.body, device_id, staged=True)
    return RotateResult(device_id, "rotated", not_after=not_after)


# --- inventory --------------------------------------------------------------------------------------


def report_inventory(store: KeyStore, server_url: str, inventory: Mapping[str, Any]) -> None:
    """Send the inventory (trimmed to the contract's limits first) over mTLS."""
    _, ca_pem = _enrolled(store)
    document = limit_inventory(inventory)
    with DeviceClient(server_url, tls_context(ca_pem, store)) as client:
        client.call("PUT", INVENTORY_PATH, document)


# --- helpers ----------------------------------------------------------------------------------------


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise AgentError("invalid_certificate", "the certificate has no common name")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def _enrolled(store: KeyStore) -> tuple[str, bytes]:
    certificate = store.load_certificate()
    ca_pem = store.load_ca_pem()
    if certificate is None or ca_pem is None:
        raise AgentError("not_enrolled", "this device has no certificate yet; run enroll first")
    return common_name(certificate), ca_pem


def _string(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise AgentError("invalid_response", f"the answer has no {key!r}")
    return value


def store_issued(store: KeyStore, body: Mapping[str, Any], device_id: str, *, staged: bool) -> datetime:
    """Check an issued certificate (for our key, our device id, signed by the CA sent), then store it."""
    certificate_pem = _string(body, "certificate").encode()
    ca_pem = _string(body, "ca_certificate").encode()
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise AgentError("invalid_certificate", f"the certificate sent does not check out: {exc}") from None
    if common_name(certificate) != device_id:
        raise AgentError("invalid_certificate", f"the certificate names {common_name(certificate)!r}")
    if staged:
        store.commit_staged_key(certificate_pem, ca_pem)
    else:
        store.store_certificate(certificate_pem, ca_pem)
    return certificate.not_valid_after_utc

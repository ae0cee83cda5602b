"""A stand-in for the device listener, run by the tests on loopback: real TLS with a test CA, client
certificates verified for the mTLS routes, and the answers of docs/device-api.md. The real server is
written elsewhere; end-to-end tests against it come once both are merged."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")


@dataclass
class FakeCA:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str = "test fleet CA") -> FakeCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        public_key: Any,
        common_name: str,
        *,
        validity: timedelta = timedelta(days=30),
        server_names: list[str] | None = None,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        start = not_before or datetime.now(UTC) - timedelta(minutes=5)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetkeeper"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server_names:
            names: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    names.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256())


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
    """What the server does: decode, verify with the key named in the payload, check freshness."""
    data = b64decode(envelope["payload"])
    payload = json.loads(data)
    key = serialization.load_pem_public_key(payload["public_key"].encode())
    signature = b64decode(envelope["signature"])
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        raise ValueError("unsupported key")
    return payload


@dataclass
class Seen:
    method: str
    path: str
    peer_common_name: str | None
    peer_public_key: bytes | None
    body: Any
    payload: dict[str, Any] | None = None


@dataclass
class FakeState:
    ca: FakeCA
    validity: timedelta = timedelta(days=30)
    # Scripted answers, consumed in order; when a list is empty: accepted / rotated.
    enroll_answers: list[str] = field(default_factory=list)
    rotate_answers: list[str] = field(default_factory=list)
    retry_after: int = 1
    seen: list[Seen] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)
    devices: dict[bytes, str] = field(default_factory=dict)  # public key PEM → device id
    revoked: set[int] = field(default_factory=set)
    inventory: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        peer = self._peer()
        seen = Seen(
            self.command,
            self.path,
            peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value if peer else None,
            _spki(peer.public_key()) if peer else None,
            body,
        )
        with state.lock:
            state.seen.append(seen)
            route = (self.command, self.path)
            if route == ("POST", "/device/v1/enroll"):
                self._enroll(state, seen)
                return
            if peer is None:
                self._problem(401, "client_certificate_required", "this route needs a client certificate")
                return
            if peer.serial_number in state.revoked:
                self._problem(401, "certificate_revoked", "this certificate was revoked")
                return
            if route == ("POST", "/device/v1/certificate/renew"):
                if raw:
                    self._problem(400, "invalid_request", "renew takes an empty body")
                    return
                self._issue(state, peer.public_key(), str(seen.peer_common_name))
            elif route == ("POST", "/device/v1/certificate/rotate"):
                self._rotate(state, seen, peer)
            elif route == ("PUT", "/device/v1/inventory"):
                state.inventory = body
                self.send_response(204)
                self.end_headers()
            else:
                self._problem(404, "not_found", "no such route")

    def _checked_payload(self, state: FakeState, seen: Seen, kind: str) -> dict[str, Any] | None:
        try:
            payload = verify_envelope(seen.body)
        except Exception:
            self._problem(400, "invalid_signature", "the signature does not verify")
            return None
        seen.payload = payload
        if payload.get("type") != kind:
            self._problem(400, "invalid_request", "wrong type")
            return None
        when = datetime.strptime(payload["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs(datetime.now(UTC) - when) > timedelta(minutes=5):
            self._problem(400, "stale_request", "timestamp too far from now")
            return None
        nonce = payload["nonce"]
        if not NONCE.fullmatch(nonce):
            self._problem(400, "invalid_request", "bad nonce")
            return None
        if nonce in state.nonces:
            self._problem(400, "replayed_request", "nonce seen before")
            return None
        state.nonces.add(nonce)
        return payload

    def _enroll(self, state: FakeState, seen: Seen) -> None:
        payload = self._checked_payload(state, seen, "fleetkeeper.enroll.v1")
        if payload is None:
            return
        public_pem = payload["public_key"].encode()
        device_id = state.devices.setdefault(public_pem, f"dev_{len(state.devices) + 1:04d}")
        answer = state.enroll_answers.pop(0) if state.enroll_answers else "accepted"
        if answer == "pending":
            self._json(202, {"device_id": device_id, "status": "pending", "retry_after": state.retry_after})
        elif answer == "rejected":
            self._problem(403, "enrollment_rejected", "an operator refused this device")
        elif answer == "bad_token":
            self._problem(401, "invalid_enrollment_token", "unknown token")
        elif answer == "html_error":
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>bad gateway</html>")
        else:
            key = serialization.load_pem_public_key(public_pem)
            self._issue(state, key, device_id, extra={"device_id": device_id, "status": "accepted"})

    def _rotate(self, state: FakeState, seen: Seen, peer: x509.Certificate) -> None:
        payload = self._checked_payload(state, seen, "fleetkeeper.rotate.v1")
        if payload is None:
            return
        if payload["device_id"] != seen.peer_common_name:
            self._problem(403, "forbidden", "not your device id")
            return
        answer = state.rotate_answers.pop(0) if state.rotate_answers else "rotated"
        if answer == "pending":
            self._json(202, {"status": "pending_approval"})
            return
        state.revoked.add(peer.serial_number)
        key = serialization.load_pem_public_key(payload["public_key"].encode())
        self._issue(state, key, payload["device_id"])

    def _issue(self, state: FakeState, key: Any, device_id: str, extra: dict[str, Any] | None = None) -> None:
        certificate = state.ca.issue(key, device_id, validity=state.validity)
        self._json(
            200,
            {
                **(extra or {}),
                "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
                "ca_certificate": state.ca.pem.decode(),
                "not_after": certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )

    def _peer(self) -> x509.Certificate | None:
        assert isinstance(self.connection, ssl.SSLSocket)
        der = self.connection.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None

    def _json(self, status: int, body: dict[str, Any], content_type: str = "application/json") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _problem(self, status: int, code: str, detail: str) -> None:
        body = {
            "type": f"urn:fleetkeeper:problem:{code}",
            "title": code.replace("_", " "),
            "status": status,
            "code": code,
            "detail": detail,
            "request_id": "fake0001",
        }
        self._json(status, body, "application/problem+json")


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, state: FakeState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.state = state

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake happens in the request's thread, so a client that fails it (a test of a wrong
        # CA or name) does not hold up the others.
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


@dataclass
class FakeListener:
    url: str
    ca_path: Path
    state: FakeState


@contextmanager
def fake_listener(
    directory: Path,
    *,
    server_names: list[str] | None = None,
    server_ca: FakeCA | None = None,
) -> Iterator[FakeListener]:
    """A listener whose certificate names `server_names` (default 127.0.0.1 and localhost), signed by
    `server_ca` (default the fleet CA the devices are given)."""
    ca = FakeCA.create()
    signer = server_ca or ca
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = signer.issue(
        server_key.public_key(), "device listener", server_names=server_names or ["127.0.0.1", "localhost"]
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "server.crt").write_bytes(server_certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (directory / "fleet-ca.crt").write_bytes(ca.pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.crt", directory / "server.key")
    context.load_verify_locations(cadata=ca.pem.decode())
    # Optional at the TLS layer, as on the real listener: enrollment comes without a certificate.
    context.verify_mode = ssl.CERT_OPTIONAL
    state = FakeState(ca=ca)
    server = _TLSServer(context, state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield FakeListener(f"https://{host!s}:{port}", directory / "fleet-ca.crt", state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

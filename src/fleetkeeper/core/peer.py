"""The device listener's view of its peer: the client certificate verified in the TLS handshake."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetkeeper.core.errors import PROBLEM_CONTENT_TYPE, UnauthenticatedError, problem_body
from fleetkeeper.core.jsonutil import dumps
from fleetkeeper.core.routeaccess import AccessRule
from fleetkeeper.core.routeaccess import marked as mark_access


@dataclass(frozen=True)
class PeerCertificate:
    subject: str
    common_name: str
    serial_number: int
    fingerprint_sha256: str
    not_valid_after: datetime


# Where the parsed certificate is kept in the connection's TLS extension: parsed once per
# connection (the extension dict is the connection's own), not once or twice per request.
PARSED_PEER = "fleetkeeper.peer"


def peer_certificate(scope: Scope) -> PeerCertificate | None:
    tls = (scope.get("extensions") or {}).get("tls") or {}
    parsed: PeerCertificate | None = tls.get(PARSED_PEER)
    if parsed is not None:
        return parsed
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    parsed = from_certificate(x509.load_pem_x509_certificate(chain[0].encode("ascii")))
    tls[PARSED_PEER] = parsed
    return parsed


def from_certificate(certificate: x509.Certificate) -> PeerCertificate:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return PeerCertificate(
        subject=certificate.subject.rfc4514_string(),
        common_name=common_name,
        serial_number=certificate.serial_number,
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        not_valid_after=certificate.not_valid_after_utc,
    )


def peer_of(connection: HTTPConnection) -> PeerCertificate:
    """The connection's verified client certificate; refused with 401 when there is none."""
    peer = peer_certificate(connection.scope)
    if peer is None:
        raise UnauthenticatedError(
            "this route needs a device certificate", code="client_certificate_required"
        )
    return peer


@mark_access(AccessRule("device"))
async def require_peer_certificate(connection: HTTPConnection) -> PeerCertificate:
    """FastAPI dependency for device routes (HTTP and WebSocket). A coroutine although it does not
    wait: FastAPI runs a plain function dependency in a worker thread, a hop per request."""
    return peer_of(connection)


class DeviceCertificateGate:
    """Deny by default: on the device listener only the listed public paths are reached without a
    client certificate (the TLS layer has already refused any certificate the fleet CA did not sign)."""

    def __init__(self, app: ASGIApp, public_paths: frozenset[str]) -> None:
        self.app = app
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in self.public_paths
            or peer_certificate(scope) is not None
        ):
            await self.app(scope, receive, send)
            return
        body = dumps(
            problem_body(401, "client_certificate_required", "this route needs a device certificate")
        )
        headers = [
            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})

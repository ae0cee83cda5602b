"""TLS glue for uvicorn: the device listener's SSL context and the peer certificate in the ASGI scope.

uvicorn does not hand the client certificate to the application. The protocol classes below
capture it from the TLS transport when a connection is made and put it into
``scope["extensions"]["tls"]`` with the key names of the ASGI TLS extension. They rely on
uvicorn's protocol classes keeping the application in ``self.app`` and calling
``connection_made`` once per connection (and once more on the WebSocket protocol after an
upgrade), which holds for the minor version pinned here; a different one refuses to start
instead of silently serving requests without identities.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from fleetkeeper.core.peer import PARSED_PEER, PeerCertificate, from_certificate

SHIM_WRITTEN_FOR_UVICORN = "0.54"

if not uvicorn.__version__.startswith(SHIM_WRITTEN_FOR_UVICORN + "."):
    raise RuntimeError(
        f"fleetkeeper.core.tls was written for uvicorn {SHIM_WRITTEN_FOR_UVICORN}.x, "
        f"found {uvicorn.__version__}: check the protocol shim against it, then update the pin"
    )


class DeviceListenerTls:
    """The device listener's TLS context: client certificates signed by the fleet CA are verified
    in the handshake, against the CA's certificate revocation list.

    A certificate is optional at the TLS layer so that enrollment (which has none yet) can reach
    its public route; every other route refuses a request without one (see DeviceCertificateGate).
    A certificate that is presented but from another CA, expired, not yet valid or revoked fails
    the handshake.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path, crl_pem: bytes, crl_number: int) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile=cert, keyfile=key)
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_CRL_CHECK_LEAF
        self.context = context
        self.crl_number = -1
        self.reloading = asyncio.Lock()
        self.crl_pem = b""
        # Called with the number of each CRL loaded later (the main process tells its workers).
        self.crl_loaded_callbacks: list[Callable[[int], None]] = []
        self.load_crl(crl_pem, number=crl_number)

    def load_crl(self, pem: bytes, *, number: int) -> None:
        """Adds a newer CRL (PEM) to the live context: OpenSSL checks new handshakes against the
        most recent CRL of the issuer it holds, so revocations apply without a restart.

        OpenSSL reads CRLs only from files; it reads this process's own copy, not the published
        crl.pem, which another process of the server may be replacing at that moment."""
        with tempfile.NamedTemporaryFile(prefix="fleetkeeper-crl-", suffix=".pem") as copy:
            copy.write(pem)
            copy.flush()
            self.context.load_verify_locations(cafile=copy.name)
        self.crl_pem = pem
        self.crl_number = number
        for callback in self.crl_loaded_callbacks:
            callback(number)


def management_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    return context


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection, or None when it is not TLS."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    parsed: dict[str, PeerCertificate] = {}
    if der:
        certificate = x509.load_der_x509_certificate(der)
        chain = [certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")]
        name = certificate.subject.rfc4514_string()
        parsed[PARSED_PEER] = from_certificate(certificate)
    cipher = ssl_object.cipher()
    return {
        **parsed,
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": cipher[0] if cipher else None,
    }


_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _with_tls(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    async def app_with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
        await app(scope, receive, send)

    return app_with_tls


class TLSHttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)


class TLSWebSocketProtocol(WebSocketsSansIOProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)

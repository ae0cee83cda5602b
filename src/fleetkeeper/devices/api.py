"""Device listener routes (docs/device-api.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request, Response, WebSocket
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from fleetkeeper.core.peer import PeerCertificate, require_peer_certificate
from fleetkeeper.core.routeaccess import public_dependency
from fleetkeeper.core.wire import RequestBody
from fleetkeeper.devices import enrollment, renewal, service
from fleetkeeper.devices.auth import AuthenticatedDevice
from fleetkeeper.devices.context import DevicesContext, devices_context
from fleetkeeper.devices.schemas import CertificateOut, EnrollmentOut, Envelope, RotationPending

router = APIRouter(prefix="/device/v1", tags=["device"])
PUBLIC = Depends(public_dependency)
# The paths the device listener serves without a client certificate (see DeviceCertificateGate).
PUBLIC_PATHS = frozenset({"/device/v1/enroll", "/device/v1/crl.pem"})


def _address(connection: HTTPConnection) -> str | None:
    return connection.client.host if connection.client else None


def _ca_pem(runtime: DevicesContext) -> str:
    return runtime.pki.ca_cert.read_text()


@router.get("/ping", status_code=204, dependencies=[Depends(require_peer_certificate)])
async def ping() -> Response:
    """Nothing but the device listener itself: TLS has verified the client certificate against the
    fleet CA and its CRL, and no database is read. The reference the check-in benchmark compares with."""
    return Response(status_code=204)


async def hot_ping(runtime: DevicesContext, peer: PeerCertificate) -> Response:
    """`ping` as a hot handler (`core/hotroutes.py`)."""
    return await ping()


@router.post("/enroll", dependencies=[PUBLIC])
async def enroll(body: Envelope, request: Request, response: Response) -> EnrollmentOut:
    """A signed enrollment request; send it again (new nonce) to poll or to fetch the certificate."""
    runtime = devices_context(request)
    answer = await enrollment.enroll(runtime, body.model_dump(), _address(request))
    if answer.status != "accepted":
        response.status_code = 202
        response.headers["Retry-After"] = str(enrollment.RETRY_AFTER_SECONDS)
        return EnrollmentOut(
            device_id=answer.device_id, status=answer.status, retry_after=enrollment.RETRY_AFTER_SECONDS
        )
    return EnrollmentOut(
        device_id=answer.device_id,
        status="accepted",
        certificate=answer.certificate,
        ca_certificate=_ca_pem(runtime),
        not_after=answer.not_after,
    )


@router.get("/crl.pem", dependencies=[PUBLIC])
async def crl(request: Request) -> Response:
    """The fleet CA's certificate revocation list (PEM), as Mosquitto's crlfile wants it: the one
    this process's TLS layer checks (in a device worker, newer than the file after its own
    revocations, until the main process publishes them)."""
    return Response(devices_context(request).device_tls.crl_pem, media_type="application/x-pem-file")


@router.post("/certificate/renew")
async def renew(device: AuthenticatedDevice, request: Request) -> CertificateOut:
    runtime = devices_context(request)
    certificate = await renewal.renew(runtime, device, _address(request))
    return CertificateOut(
        certificate=certificate.pem, ca_certificate=_ca_pem(runtime), not_after=certificate.not_after
    )


@router.post("/certificate/rotate", response_model=None)
async def rotate(
    device: AuthenticatedDevice, body: Envelope, request: Request, response: Response
) -> CertificateOut | RotationPending:
    """A new key, in an envelope signed by it; 202 while an operator's approval is awaited."""
    runtime = devices_context(request)
    certificate = await renewal.rotate(runtime, device, body.model_dump(), _address(request))
    if certificate is None:
        response.status_code = 202
        return RotationPending()
    return CertificateOut(
        certificate=certificate.pem, ca_certificate=_ca_pem(runtime), not_after=certificate.not_after
    )


@router.put("/inventory", status_code=204)
async def inventory(
    device: AuthenticatedDevice, request: Request, report: Annotated[Any, Body()]
) -> Response:
    """The device's latest inventory (limits in docs/device-api.md)."""
    await service.report_inventory(devices_context(request).database, device.id, report)
    return Response(status_code=204)


class SecurityEvent(RequestBody):
    type: Literal["security"]
    code: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    detail: str = Field(default="", max_length=2000)


@router.post("/events", status_code=204)
async def security_event(device: AuthenticatedDevice, event: SecurityEvent, request: Request) -> Response:
    """Something the agent refused that only a broken or compromised server, or a man in the middle,
    causes (expired metadata, a lower release counter, a bad signature): onto the audit log."""
    await service.record_security_event(
        devices_context(request).database, device, event.code, event.detail, address=_address(request)
    )
    return Response(status_code=204)


class Identity(BaseModel):
    subject: str
    common_name: str
    serial_number: str
    fingerprint_sha256: str


def _identity(peer: PeerCertificate) -> Identity:
    return Identity(
        subject=peer.subject,
        common_name=peer.common_name,
        serial_number=format(peer.serial_number, "x"),
        fingerprint_sha256=peer.fingerprint_sha256,
    )


@router.get("/whoami")
async def whoami(peer: Annotated[PeerCertificate, Depends(require_peer_certificate)]) -> Identity:
    """The identity the server sees in this connection's client certificate."""
    return _identity(peer)


@router.websocket("/whoami")
async def whoami_ws(
    websocket: WebSocket, peer: Annotated[PeerCertificate, Depends(require_peer_certificate)]
) -> None:
    """The same over a WebSocket: one message, then a normal close. Agents use it to test their channel."""
    await websocket.accept()
    await websocket.send_json(_identity(peer).model_dump())
    await websocket.close()

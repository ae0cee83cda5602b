"""A device as tests need one: its own key, signed requests, and a client for the device app that
presents its certificate the way the TLS shim does."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import select
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.server.app import create_device_app
from fleetkeeper.server.runtime import Runtime
from tests.conftest import Api

DeviceKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(kind: str = "ed25519") -> DeviceKey:
    return (
        ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    )


def public_pem(key: DeviceKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key: DeviceKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def envelope(key: DeviceKey, payload: dict[str, Any], *, signer: DeviceKey | None = None) -> dict[str, str]:
    raw = json.dumps(payload).encode()
    return {"payload": b64(raw), "signature": b64(sign(signer or key, raw))}


def now_stamp(offset: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + offset).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeDevice:
    device_type: str = "rpi4"
    serial: str = field(default_factory=lambda: f"SN-{secrets.token_hex(4)}")
    key: DeviceKey = field(default_factory=new_key)
    token: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    mac: str | None = None
    device_id: str | None = None
    certificate: str | None = None

    def enroll_payload(self, **changes: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": "fleetkeeper.enroll.v1",
            "identity": {
                "device_type": self.device_type,
                "serial": self.serial,
                "attributes": self.attributes,
                **({"mac": self.mac} if self.mac else {}),
            },
            "public_key": public_pem(self.key),
            "timestamp": now_stamp(),
            "nonce": secrets.token_urlsafe(18),
        }
        if self.token:
            payload["enrollment_token"] = self.token
        payload.update(changes)
        return payload

    def enroll_body(self, **changes: Any) -> dict[str, str]:
        return envelope(self.key, self.enroll_payload(**changes))

    def rotate_body(self, new: DeviceKey, **changes: Any) -> dict[str, str]:
        payload = {
            "type": "fleetkeeper.rotate.v1",
            "device_id": self.device_id,
            "public_key": public_pem(new),
            "timestamp": now_stamp(),
            "nonce": secrets.token_urlsafe(18),
            **changes,
        }
        return envelope(new, payload)


def _with_client_certificate(app: ASGIApp, pem: str | None) -> ASGIApp:
    """What core.tls does for a real TLS connection: the verified peer certificate in the scope."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        tls = {"client_cert_chain": [pem] if pem else [], "client_cert_name": None, "tls_version": 0x0304}
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
        await app(scope, receive, send)

    return wrapped


@asynccontextmanager
async def device_client(
    runtime: Runtime, certificate: str | None = None, *, address: str = "198.51.100.20"
) -> AsyncIterator[httpx2.AsyncClient]:
    app = _with_client_certificate(create_device_app(runtime), certificate)
    transport = httpx2.ASGITransport(app=app, client=(address, 50000))
    async with httpx2.AsyncClient(transport=transport, base_url="https://devices.test") as client:
        yield client


async def enroll(runtime: Runtime, device: FakeDevice) -> httpx2.Response:
    async with device_client(runtime) as client:
        response = await client.post("/device/v1/enroll", json=device.enroll_body())
    if response.status_code in (200, 202):
        device.device_id = response.json()["device_id"]
        device.certificate = response.json().get("certificate")
    return response


async def report(api: Api, certificate: str | None, inventory: dict[str, object]) -> None:
    async with device_client(api.runtime, certificate) as client:
        assert (await client.put("/device/v1/inventory", json=inventory)).status_code == 204


async def actions_for(api: Api, device_id: str) -> list[str]:
    async with api.runtime.database.session() as session:
        rows = await session.scalars(
            select(AuditRecord.action).where(AuditRecord.object_id == device_id).order_by(AuditRecord.seq)
        )
        return list(rows)


async def accepted_device(api: Api, headers: dict[str, str] | None = None, **kwargs: Any) -> FakeDevice:
    """A device enrolled, accepted (by `headers`, else the administrator signed in anew) and holding
    its certificate. Pass `headers` where sign-ins add up: they are rate limited per account."""
    device = FakeDevice(**kwargs)
    await enroll(api.runtime, device)
    accepted = await api.client.post(
        f"/api/v1/devices/{device.device_id}/accept", headers=headers or await api.admin_headers()
    )
    assert accepted.status_code == 200, accepted.text
    assert (await enroll(api.runtime, device)).status_code == 200, "collects its certificate"
    return device


async def shown(api: Api, device_id: str | None) -> dict[str, Any]:
    answer = await api.client.get(f"/api/v1/devices/{device_id}", headers=await api.admin_headers())
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def audit_details(api: Api, device_id: str | None, action: str) -> list[dict[str, Any]]:
    async with api.runtime.database.session() as session:
        rows = await session.scalars(
            select(AuditRecord.details)
            .where(AuditRecord.object_id == device_id, AuditRecord.action == action)
            .order_by(AuditRecord.seq)
        )
        return [json.loads(row) for row in rows]

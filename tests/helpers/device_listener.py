"""A running server's device listener over real TLS, with its administrator signed in: enrol and
accept devices as they would, and present their certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ADMIN_PASSWORD, ClientCertificate, RunningServer
from tests.helpers.devices import FakeDevice


@dataclass
class Fleet:
    server: RunningServer
    admin: dict[str, str]

    def management(self) -> httpx2.Client:
        return httpx2.Client(base_url=self.server.management_url, headers=self.admin, timeout=10)

    def tls(self, client: ClientCertificate | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.server.ca_cert))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        return context

    def enroll(self, device: FakeDevice) -> httpx2.Response:
        with httpx2.Client(verify=self.tls(), timeout=10) as http:
            response = http.post(f"{self.server.device_url}/device/v1/enroll", json=device.enroll_body())
        device.device_id = response.json().get("device_id")
        device.certificate = response.json().get("certificate")
        return response

    def accepted(self, device: FakeDevice, directory: Path) -> ClientCertificate:
        assert self.enroll(device).status_code == 202
        with self.management() as http:
            assert http.post(f"/api/v1/devices/{device.device_id}/accept").status_code == 200
        assert self.enroll(device).status_code == 200
        from cryptography.hazmat.primitives import serialization

        files = ClientCertificate(
            directory / f"{device.device_id}.crt", directory / f"{device.device_id}.key"
        )
        files.cert.write_text(device.certificate or "")
        files.key.write_bytes(
            device.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return files

    def put_inventory(self, client: ClientCertificate | None) -> httpx2.Response:
        with httpx2.Client(verify=self.tls(client), timeout=10) as http:
            return http.put(f"{self.server.device_url}/device/v1/inventory", json={"kernel": "6.1"})


def signed_in_fleet(server: RunningServer) -> Fleet:
    """The server with its first administrator signed in (its one-time password changed)."""
    with httpx2.Client(base_url=server.management_url, timeout=10) as http:
        first = http.post(
            "/api/v1/auth/sign-in", json={"username": "admin", "password": server.admin_password}
        )
        token = first.json()["access_token"]
        http.post(
            "/api/v1/me/password",
            json={"current_password": server.admin_password, "new_password": ADMIN_PASSWORD},
            headers={"authorization": f"Bearer {token}"},
        )
        signed_in = http.post("/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD})
    return Fleet(server, {"authorization": f"Bearer {signed_in.json()['access_token']}"})


@pytest.fixture(scope="module")
def fleet(running_server: RunningServer) -> Fleet:
    return signed_in_fleet(running_server)

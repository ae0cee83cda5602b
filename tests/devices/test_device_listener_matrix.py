"""The device listener over real TLS with real enrolled devices: no certificate, another CA's,
expired, revoked, a certificate the server never issued, and a valid one — only the valid one
reaches the device's data."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx2
import pytest

from tests.conftest import RunningServer
from tests.helpers.device_listener import Fleet, signed_in_fleet
from tests.helpers.devices import FakeDevice


@pytest.fixture(scope="module")
def fleet(running_server: RunningServer) -> Fleet:
    return signed_in_fleet(running_server)


def test_valid_certificate_reaches_its_device(fleet: Fleet, tmp_path: Path) -> None:
    device = FakeDevice()
    files = fleet.accepted(device, tmp_path)
    assert fleet.put_inventory(files).status_code == 204
    with fleet.management() as http:
        assert http.get(f"/api/v1/devices/{device.device_id}").json()["inventory"] == {"kernel": "6.1"}


def test_no_certificate_is_refused(fleet: Fleet) -> None:
    response = fleet.put_inventory(None)
    assert response.status_code == 401
    assert response.json()["code"] == "client_certificate_required"


@pytest.mark.parametrize("kind", ["other_ca", "expired"])
def test_foreign_or_expired_certificates_fail_the_handshake(fleet: Fleet, tmp_path: Path, kind: str) -> None:
    device = FakeDevice()
    fleet.accepted(device, tmp_path)
    factory = fleet.server.certificates(tmp_path)
    client = (
        factory.issue(device.device_id or "", other_ca=True)
        if kind == "other_ca"
        else factory.expired(device.device_id or "")
    )
    with pytest.raises((httpx2.TransportError, ssl.SSLError)):
        fleet.put_inventory(client)


def test_a_certificate_the_server_never_issued_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    device = FakeDevice()
    fleet.accepted(device, tmp_path)
    # Signed by the fleet CA (as a stolen CA key could), naming a real device, but never issued.
    unknown = fleet.server.certificates(tmp_path).issue(device.device_id or "")
    response = fleet.put_inventory(unknown)
    assert response.status_code == 401
    assert response.json()["code"] == "unknown_certificate"


def test_revoked_certificate_fails_the_handshake(fleet: Fleet, tmp_path: Path) -> None:
    device = FakeDevice()
    files = fleet.accepted(device, tmp_path)
    assert fleet.put_inventory(files).status_code == 204
    with fleet.management() as http:
        assert http.post(f"/api/v1/devices/{device.device_id}/decommission").status_code == 200
    # Refused in the TLS handshake now (the CRL was loaded), not only by the application.
    with pytest.raises((httpx2.TransportError, ssl.SSLError)):
        fleet.put_inventory(files)
    crl = httpx2.get(f"{fleet.server.management_url}/api/v1/pki/crl.pem")
    assert (fleet.server.data_dir / "pki" / "crl.pem").read_bytes() == crl.content


def test_ping_answers_any_certificate_of_the_fleet_ca_without_reading_the_database(
    fleet: Fleet, tmp_path: Path
) -> None:
    device = FakeDevice()
    files = fleet.accepted(device, tmp_path)
    # Never issued: the database would refuse it, the reachability probe does not ask the database.
    unknown = fleet.server.certificates(tmp_path).issue(device.device_id or "")
    for client in (files, unknown):
        with httpx2.Client(verify=fleet.tls(client), timeout=10) as http:
            response = http.get(f"{fleet.server.device_url}/device/v1/ping")
        assert (response.status_code, response.content) == (204, b"")
    with httpx2.Client(verify=fleet.tls(), timeout=10) as http:
        refused = http.get(f"{fleet.server.device_url}/device/v1/ping")
    assert refused.status_code == 401
    assert refused.json()["code"] == "client_certificate_required"

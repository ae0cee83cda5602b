"""The real agent command line against a real server: enroll into the queue, accepted by an
operator, report inventory, renew, rotate its key; and a factory token that accepts at once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx2
from cryptography import x509

from tests.conftest import RunningServer
from tests.helpers.device_listener import Fleet, fleet  # noqa: F401  (the fixture)


def agent(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetkeeper_agent", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )


def enroll_args(server: RunningServer, *extra: str) -> list[str]:
    return [
        "enroll",
        "--server",
        server.device_url,
        "--ca",
        str(server.ca_cert),
        "--device-type",
        "rpi4",
        *extra,
    ]


def certificate(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "device.crt").read_bytes())


def test_enroll_accept_inventory_renew_rotate(fleet: Fleet, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "agent"
    pending = agent(data, *enroll_args(fleet.server, "--serial", "SN-E2E-1", "--attribute", "site=plant-3"))
    assert pending.returncode == 3, pending.stderr
    assert stat.S_IMODE((data / "device.key").stat().st_mode) == 0o600
    with fleet.management() as http:
        queue = http.get(
            "/api/v1/devices", params={"status": "pending", "filter": 'serial == "SN-E2E-1"'}
        ).json()
        device_id = queue["items"][0]["id"]
        assert queue["items"][0]["identity"]["attributes"] == {"site": "plant-3"}
        assert http.post(f"/api/v1/devices/{device_id}/accept").status_code == 200

    accepted = agent(data, *enroll_args(fleet.server, "--serial", "SN-E2E-1"))
    assert accepted.returncode == 0, accepted.stderr
    first = certificate(data)
    assert first.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == device_id
    assert device_id in agent(data, "identity").stdout

    sent = agent(data, "inventory", "--send", "--attribute", "line=7")
    assert sent.returncode == 0, sent.stderr
    with fleet.management() as http:
        inventory = http.get(f"/api/v1/devices/{device_id}").json()["inventory"]
    assert inventory["attributes"]["line"] == "7"
    assert inventory["kernel"]

    not_due = agent(data, "renew")
    assert not_due.returncode == 0
    assert certificate(data).serial_number == first.serial_number
    renewed = agent(data, "renew", "--if-expiring-within", "60")
    assert renewed.returncode == 0, renewed.stderr
    assert certificate(data).serial_number != first.serial_number

    old_key = (data / "device.key").read_bytes()
    rotated = agent(data, "rotate-key", "--key-type", "ecdsa-p256")
    assert rotated.returncode == 0, rotated.stderr
    assert (data / "device.key").read_bytes() != old_key
    assert agent(data, "inventory", "--send").returncode == 0, "the new key and certificate work"
    with fleet.management() as http:
        detail = http.get(f"/api/v1/devices/{device_id}").json()
        actions = [
            item["action"]
            for item in http.get("/api/v1/audit/records", params={"object_id": device_id}).json()["items"]
        ]
    assert sum(1 for c in detail["certificates"] if c["revoked_at"]) >= 2, (
        "the old key's certificates are revoked"
    )
    for action in (
        "device.enrollment_requested",
        "device.accepted",
        "device.certificate_renewed",
        "device.key_rotated",
    ):
        assert action in actions


def test_factory_token_enrolls_at_once_and_refusals_are_clear(fleet: Fleet, tmp_path: Path) -> None:  # noqa: F811
    with fleet.management() as http:
        token = http.post(
            "/api/v1/enrollment-tokens", json={"name": "line", "max_uses": 1, "auto_accept": True}
        ).json()["secret"]
    first = agent(tmp_path / "one", *enroll_args(fleet.server, "--token", token))
    assert first.returncode == 0, first.stderr
    second = agent(tmp_path / "two", *enroll_args(fleet.server, "--token", token))
    assert second.returncode == 1
    assert "invalid_enrollment_token" in second.stderr
    wrong_ca = agent(
        tmp_path / "three",
        "enroll",
        "--server",
        fleet.server.device_url,
        "--ca",
        str(_other_ca(tmp_path)),
        "--device-type",
        "rpi4",
    )
    assert wrong_ca.returncode == 1
    assert "Traceback" not in wrong_ca.stderr
    assert json.loads(agent(tmp_path / "one", "inventory").stdout)["device_type"] == "rpi4"
    assert httpx2.get(f"{fleet.server.management_url}/healthz").status_code == 200


def _other_ca(directory: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    from fleetkeeper.core.pki import CertificateAuthority

    path = directory / "other-ca.pem"
    path.write_bytes(
        CertificateAuthority.create("not the fleet").certificate.public_bytes(serialization.Encoding.PEM)
    )
    return path

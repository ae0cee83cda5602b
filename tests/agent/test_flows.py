"""Enroll, renew, rotate and report against a fake device listener over real TLS on loopback."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fleetkeeper_agent.cli import main
from fleetkeeper_agent.errors import AgentError, ServerError
from fleetkeeper_agent.identity import (
    DeviceIdentity,
    IdentityState,
    common_name,
    enroll,
    renew,
    renewal_due,
    report_inventory,
    rotate_key,
)
from fleetkeeper_agent.keystore import FileKeyStore
from fleetkeeper_agent.keytypes import KeyType
from tests.agent.fakeserver import FakeCA, FakeListener, fake_listener

IDENTITY = DeviceIdentity("rpi4", serial="SN-0042", mac="DC-A6-32-01-02-03", attributes={"site": "plant-3"})


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[FakeListener]:
    with fake_listener(tmp_path / "server") as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "agent")


def spki(pem: str) -> bytes:
    key = serialization.load_pem_public_key(pem.encode())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def enrolled(store: FileKeyStore, listener: FakeListener, key_type: KeyType = "ed25519") -> str:
    result = enroll(store, listener.url, listener.ca_path, IDENTITY, key_type=key_type)
    assert result.status == "accepted"
    return result.device_id


# --- enrollment --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256"])
def test_enroll_waits_through_pending_then_stores_the_certificate(
    store: FileKeyStore, listener: FakeListener, key_type: KeyType
) -> None:
    listener.state.enroll_answers = ["pending"]
    started = time.monotonic()
    result = enroll(store, listener.url, listener.ca_path, IDENTITY, key_type=key_type, wait=30)
    assert time.monotonic() - started >= 1  # it honoured retry_after
    assert result.status == "accepted"
    assert result.device_id == "dev_0001"
    certificate = store.load_certificate()
    assert certificate is not None
    assert common_name(certificate) == "dev_0001"
    assert result.not_after == certificate.not_valid_after_utc
    assert store.load_ca_pem() == listener.state.ca.pem
    assert store.key_type() == key_type
    assert stat.S_IMODE(os.stat(store.key_path).st_mode) == 0o600

    first, second = (seen.payload for seen in listener.state.seen)
    assert first is not None
    assert second is not None
    assert first["nonce"] != second["nonce"]
    assert first["type"] == "fleetkeeper.enroll.v1"
    assert first["identity"] == {
        "device_type": "rpi4",
        "serial": "SN-0042",
        "mac": "dc:a6:32:01:02:03",
        "attributes": {"site": "plant-3"},
    }
    assert spki(first["public_key"]) == spki(store.public_key_pem())
    assert "enrollment_token" not in first
    assert all(seen.peer_common_name is None for seen in listener.state.seen)


def test_enroll_without_wait_asks_once_and_reports_pending(
    store: FileKeyStore, listener: FakeListener
) -> None:
    listener.state.enroll_answers = ["pending", "pending"]
    result = enroll(store, listener.url, listener.ca_path, IDENTITY)
    assert result.status == "pending"
    assert result.retry_after == 1
    assert len(listener.state.seen) == 1
    assert store.load_certificate() is None


def test_enroll_stops_at_the_wait_limit(store: FileKeyStore, listener: FakeListener) -> None:
    listener.state.enroll_answers = ["pending"] * 10
    started = time.monotonic()
    result = enroll(store, listener.url, listener.ca_path, IDENTITY, wait=1.5)
    assert result.status == "pending"
    assert 1.5 <= time.monotonic() - started < 5
    assert len(listener.state.seen) == 3  # at 0, 1 and at the deadline


def test_enrolling_again_reuses_the_key(store: FileKeyStore, listener: FakeListener) -> None:
    listener.state.enroll_answers = ["pending"]
    first = enroll(store, listener.url, listener.ca_path, IDENTITY)
    second = enroll(store, listener.url, listener.ca_path, IDENTITY)
    assert first.device_id == second.device_id
    assert second.status == "accepted"
    with pytest.raises(AgentError) as raised:
        enroll(store, listener.url, listener.ca_path, IDENTITY, key_type="ecdsa-p256")
    assert raised.value.code == "key_exists"


def test_enroll_sends_the_token_and_surfaces_its_refusal(store: FileKeyStore, listener: FakeListener) -> None:
    listener.state.enroll_answers = ["bad_token"]
    with pytest.raises(ServerError) as raised:
        enroll(store, listener.url, listener.ca_path, IDENTITY, token="fket_secret")
    assert raised.value.code == "invalid_enrollment_token"
    assert raised.value.status == 401
    payload = listener.state.seen[0].payload
    assert payload is not None
    assert payload["enrollment_token"] == "fket_secret"


def test_refused_enrollment_is_one_line_with_the_code(
    tmp_path: Path, listener: FakeListener, capsys: pytest.CaptureFixture[str]
) -> None:
    listener.state.enroll_answers = ["rejected"]
    status = main(enroll_argv(tmp_path, listener))
    err = capsys.readouterr().err
    assert status == 1
    assert (
        "error: enrollment_rejected: an operator refused this device (HTTP 403, request id fake0001)" in err
    )
    assert "Traceback" not in err


def test_an_answer_that_is_no_problem_document_still_gets_a_code(
    store: FileKeyStore, listener: FakeListener
) -> None:
    listener.state.enroll_answers = ["html_error"]
    with pytest.raises(ServerError) as raised:
        enroll(store, listener.url, listener.ca_path, IDENTITY)
    assert raised.value.code == "http_502"


def test_a_server_certificate_from_another_ca_is_refused(tmp_path: Path, store: FileKeyStore) -> None:
    with fake_listener(tmp_path / "server", server_ca=FakeCA.create("impostor")) as impostor:
        with pytest.raises(AgentError) as raised:
            enroll(store, impostor.url, impostor.ca_path, IDENTITY)
        assert raised.value.code == "network_error"
        assert "certificate verify failed" in raised.value.message
        assert impostor.state.seen == []


def test_a_server_certificate_for_another_name_is_refused(tmp_path: Path, store: FileKeyStore) -> None:
    with fake_listener(tmp_path / "server", server_names=["devices.example.com"]) as elsewhere:
        with pytest.raises(AgentError) as raised:
            enroll(store, elsewhere.url, elsewhere.ca_path, IDENTITY)
        assert raised.value.code == "network_error"
        assert "IP address mismatch" in raised.value.message or "hostname" in raised.value.message


def test_no_server_is_a_network_error(
    tmp_path: Path, listener: FakeListener, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = enroll_argv(tmp_path, listener)
    argv[argv.index("--server") + 1] = "https://127.0.0.1:9"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: network_error: cannot talk to https://127.0.0.1:9")


def enroll_argv(tmp_path: Path, listener: FakeListener, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(tmp_path / "agent"),
        "enroll",
        "--server",
        listener.url,
        "--ca",
        str(listener.ca_path),
        "--device-type",
        "rpi4",
        "--serial",
        "SN-1",
        "--attribute",
        "site=plant-3",
        *extra,
    ]


def test_cli_enroll_pending_then_accepted_then_identity(
    tmp_path: Path, listener: FakeListener, capsys: pytest.CaptureFixture[str]
) -> None:
    listener.state.enroll_answers = ["pending"]
    assert main(enroll_argv(tmp_path, listener)) == 3
    assert "pending: dev_0001" in capsys.readouterr().out
    state = IdentityState.load(tmp_path / "agent")
    assert state == IdentityState(listener.url, "dev_0001", "rpi4", "pending")

    assert main(enroll_argv(tmp_path, listener, "--key-type", "ed25519")) == 0
    assert "enrolled: dev_0001" in capsys.readouterr().out
    state = IdentityState.load(tmp_path / "agent")
    assert state is not None
    assert state.status == "accepted"
    names = sorted(path.name for path in (tmp_path / "agent").iterdir())
    assert names == ["ca.crt", "device.crt", "device.key", "identity.json"]
    assert json.loads((tmp_path / "agent" / "identity.json").read_text())["device_id"] == "dev_0001"

    assert main(["--data-dir", str(tmp_path / "agent"), "identity"]) == 0
    out = capsys.readouterr().out
    assert "device id: dev_0001" in out
    assert "subject: CN=dev_0001,O=fleetkeeper" in out
    assert "not after: " in out


# --- certificates --------------------------------------------------------------------------------------


def test_renew_over_mtls_stores_a_new_certificate(store: FileKeyStore, listener: FakeListener) -> None:
    device_id = enrolled(store, listener, "ecdsa-p256")
    before = store.load_certificate()
    assert before is not None
    result = renew(store, listener.url)
    after = store.load_certificate()
    assert after is not None
    assert after.serial_number != before.serial_number
    assert result.device_id == device_id
    assert result.not_after == after.not_valid_after_utc
    seen = listener.state.seen[-1]
    assert seen.path == "/device/v1/certificate/renew"
    assert seen.peer_common_name == device_id  # the device certificate authenticated the call
    assert seen.body is None


def test_renewal_is_due_in_the_last_third_by_default() -> None:
    ca = FakeCA.create()
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    certificate = ca.issue(key, "dev", validity=timedelta(days=30), not_before=start)
    assert not renewal_due(certificate, now=start + timedelta(days=19))
    assert renewal_due(certificate, now=start + timedelta(days=21))
    assert renewal_due(certificate, now=start + timedelta(days=15), within=timedelta(days=16))
    assert not renewal_due(certificate, now=start + timedelta(days=15), within=timedelta(days=14))


def test_cli_renew_only_when_due(
    tmp_path: Path, listener: FakeListener, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(enroll_argv(tmp_path, listener)) == 0
    data_dir = ["--data-dir", str(tmp_path / "agent")]
    capsys.readouterr()
    assert main([*data_dir, "renew"]) == 0
    assert capsys.readouterr().out.startswith("not due: the certificate is valid until ")
    assert main([*data_dir, "renew", "--if-expiring-within", "7"]) == 0
    assert "not due" in capsys.readouterr().out
    requests = len(listener.state.seen)
    assert main([*data_dir, "renew", "--if-expiring-within", "31"]) == 0
    assert capsys.readouterr().out.startswith("renewed: certificate valid until ")
    assert len(listener.state.seen) == requests + 1


@pytest.mark.parametrize(("old_type", "new_type"), [("ed25519", None), ("ed25519", "ecdsa-p256")])
def test_rotate_swaps_key_and_certificate(
    store: FileKeyStore, listener: FakeListener, old_type: KeyType, new_type: KeyType | None
) -> None:
    device_id = enrolled(store, listener, old_type)
    old_public = store.public_key_pem()
    old_certificate = store.load_certificate()
    assert old_certificate is not None

    result = rotate_key(store, listener.url, key_type=new_type)
    assert result.status == "rotated"
    seen = listener.state.seen[-1]
    assert seen.path == "/device/v1/certificate/rotate"
    assert seen.payload is not None
    assert seen.payload["type"] == "fleetkeeper.rotate.v1"
    assert seen.payload["device_id"] == device_id
    # Signed by the new key (the fake verified it), over a connection made with the old certificate.
    assert seen.peer_public_key == spki(old_public)
    assert spki(seen.payload["public_key"]) == spki(store.public_key_pem())
    assert spki(store.public_key_pem()) != spki(old_public)
    assert store.key_type() == (new_type or old_type)
    assert not store.has_staged_key()
    certificate = store.load_certificate()
    assert certificate is not None
    assert common_name(certificate) == device_id
    assert result.not_after == certificate.not_valid_after_utc

    # The old certificate is revoked: only the new key and certificate can renew now.
    renew(store, listener.url)
    assert listener.state.seen[-1].peer_public_key == spki(store.public_key_pem())


def test_rotate_pending_keeps_the_staged_key_for_the_next_attempt(
    tmp_path: Path, store: FileKeyStore, listener: FakeListener, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(enroll_argv(tmp_path, listener)) == 0
    listener.state.rotate_answers = ["pending"]
    current_key = store.key_path.read_bytes()
    data_dir = ["--data-dir", str(tmp_path / "agent")]
    assert main([*data_dir, "rotate-key"]) == 3
    assert "pending" in capsys.readouterr().out
    assert store.has_staged_key()
    assert store.key_path.read_bytes() == current_key
    staged_public = store.public_key_pem(staged=True)

    assert main([*data_dir, "rotate-key"]) == 0
    assert "rotated" in capsys.readouterr().out
    first, second = (seen.payload for seen in listener.state.seen if seen.path.endswith("/rotate"))
    assert first is not None
    assert second is not None
    assert first["public_key"] == second["public_key"] == staged_public
    assert first["nonce"] != second["nonce"]
    assert store.public_key_pem() == staged_public
    assert not store.has_staged_key()


def test_rotate_refused_keeps_everything(store: FileKeyStore, listener: FakeListener) -> None:
    enrolled(store, listener)
    current_key = store.key_path.read_bytes()
    current_certificate = store.certificate_path.read_bytes()
    listener.state.revoked.add(x509.load_pem_x509_certificate(current_certificate).serial_number)
    with pytest.raises(ServerError) as raised:
        rotate_key(store, listener.url)
    assert raised.value.code == "certificate_revoked"
    assert store.key_path.read_bytes() == current_key
    assert store.certificate_path.read_bytes() == current_certificate


# --- inventory -------------------------------------------------------------------------------------------


def test_inventory_is_reported_over_mtls(store: FileKeyStore, listener: FakeListener) -> None:
    device_id = enrolled(store, listener)
    report_inventory(store, listener.url, {"device_type": "rpi4", "attributes": {"site": "plant-3"}})
    seen = listener.state.seen[-1]
    assert (seen.method, seen.path, seen.peer_common_name) == ("PUT", "/device/v1/inventory", device_id)
    assert listener.state.inventory == {"device_type": "rpi4", "attributes": {"site": "plant-3"}}


def test_cli_inventory_send(
    tmp_path: Path, listener: FakeListener, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(enroll_argv(tmp_path, listener)) == 0
    assert main(["--data-dir", str(tmp_path / "agent"), "inventory", "--send", "--attribute", "line=7"]) == 0
    assert "inventory sent for dev_0001" in capsys.readouterr().out
    document = listener.state.inventory
    assert document is not None
    assert document["device_type"] == "rpi4"
    assert document["attributes"] == {"line": "7"}
    assert document["kernel"]

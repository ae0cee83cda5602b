"""The signed envelope verifies with the key in the payload, for both key types, and only untampered."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from fleetkeeper_agent.keystore import FileKeyStore
from fleetkeeper_agent.keytypes import KeyType
from fleetkeeper_agent.signing import b64url_decode, b64url_encode, signed_envelope, utc_timestamp
from tests.agent.fakeserver import verify_envelope


@pytest.fixture(params=["ed25519", "ecdsa-p256"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FileKeyStore:
    key_type: KeyType = request.param
    store = FileKeyStore(tmp_path)
    store.generate(key_type)
    return store


def test_envelope_verifies_and_carries_fresh_timestamp_and_nonce(store: FileKeyStore) -> None:
    envelope = signed_envelope(
        {"type": "fleetkeeper.enroll.v1", "public_key": store.public_key_pem()}, store.sign
    )
    assert set(envelope) == {"payload", "signature"}
    assert "=" not in envelope["payload"]
    assert "=" not in envelope["signature"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", envelope["payload"] + envelope["signature"])
    payload = verify_envelope(envelope)
    assert payload["type"] == "fleetkeeper.enroll.v1"
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", payload["nonce"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", payload["timestamp"])
    sent = datetime.strptime(payload["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - sent) < timedelta(seconds=5)


def test_each_envelope_has_its_own_nonce(store: FileKeyStore) -> None:
    payload = {"public_key": store.public_key_pem()}
    nonces = {verify_envelope(signed_envelope(payload, store.sign))["nonce"] for _ in range(20)}
    assert len(nonces) == 20


def test_a_tampered_payload_does_not_verify(store: FileKeyStore) -> None:
    envelope = signed_envelope({"type": "x", "public_key": store.public_key_pem()}, store.sign)
    payload = json.loads(b64url_decode(envelope["payload"]))
    payload["type"] = "y"
    forged = {**envelope, "payload": b64url_encode(json.dumps(payload, separators=(",", ":")).encode())}
    with pytest.raises(InvalidSignature):
        verify_envelope(forged)


def test_a_tampered_signature_does_not_verify(store: FileKeyStore) -> None:
    envelope = signed_envelope({"type": "x", "public_key": store.public_key_pem()}, store.sign)
    signature = bytearray(b64url_decode(envelope["signature"]))
    signature[len(signature) // 2] ^= 0x01
    with pytest.raises(InvalidSignature):
        verify_envelope({**envelope, "signature": b64url_encode(bytes(signature))})


def test_a_signature_by_another_key_does_not_verify(store: FileKeyStore, tmp_path: Path) -> None:
    other = FileKeyStore(tmp_path / "other")
    other.generate(store.key_type())
    envelope = signed_envelope({"public_key": store.public_key_pem()}, other.sign)
    with pytest.raises(InvalidSignature):
        verify_envelope(envelope)


def test_timestamps_are_utc_with_z() -> None:
    moment = datetime(2026, 11, 21, 16, 0, 0, tzinfo=UTC) + timedelta(hours=0)
    assert utc_timestamp(moment) == "2026-11-21T16:00:00Z"
    assert utc_timestamp(moment.astimezone()) == "2026-11-21T16:00:00Z"

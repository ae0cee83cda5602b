"""The update checker against the real server (a `fleetkeeper serve` subprocess, SQLite and PostgreSQL):
trust installed with offline keys, a signed release uploaded, a device enrolled by the agent's own code
and accepted, a deployment assigning the release; then check, download, and what must be refused."""

from __future__ import annotations

import hashlib
import secrets
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from tuf.api.metadata import Metadata

from fleetkeeper.releases.artifact import create_artifact
from fleetkeeper.releases.keys import init_keys
from fleetkeeper.releases.signing import sign_release
from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json
from fleetkeeper_agent.client import tls_context
from fleetkeeper_agent.errors import UpdateRefused
from fleetkeeper_agent.identity import DeviceIdentity, enroll
from fleetkeeper_agent.keystore import FileKeyStore
from fleetkeeper_agent.uptane import UpdateChecker, VerifiedUpdate, consistent_target_path
from tests.agent.tuf_repository import in_days, repository_server
from tests.conftest import RunningServer

NEW_ADMIN_PASSWORD = "a-long-test-password-for-the-agent-" + secrets.token_hex(4)


@dataclass
class Fleet:
    """The management side of one running server, as an operator and a release engineer use it."""

    server: RunningServer
    http: httpx2.Client
    headers: dict[str, str]
    keys: Path
    roots: dict[str, bytes]

    def release(self, directory: Path, name: str, payload: bytes, counter: int) -> None:
        source = directory / f"{name}.bin"
        source.write_bytes(payload)
        artifact = directory / f"{name}.fkr"
        create_artifact(
            artifact,
            name=name,
            version="1.0",
            release_counter=counter,
            module="file",
            device_types=["rpi4"],
            depends={},
            provides={},
            payload_paths=[source],
        )
        current = self.http.get("/api/v1/repository/metadata/targets.json", headers=self.headers)
        sign_release(artifact, self.keys, Metadata.from_bytes(current.content), in_days(30))
        data = artifact.read_bytes()
        started = self.http.post(
            "/api/v1/releases/uploads",
            json={"length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tags": []},
            headers=self.headers,
        )
        assert started.status_code == 201, started.text
        upload = started.json()["id"]
        sent = self.http.patch(
            f"/api/v1/releases/uploads/{upload}", content=data, headers={**self.headers, "upload-offset": "0"}
        )
        assert sent.status_code == 200, sent.text
        done = self.http.post(f"/api/v1/releases/uploads/{upload}/complete", headers=self.headers)
        assert done.status_code == 201, done.text

    def device(self, directory: Path) -> tuple[str, ssl.SSLContext]:
        """A device enrolled by the agent's own code and accepted by the operator: its id and mTLS context."""
        store = FileKeyStore(directory)
        identity = DeviceIdentity("rpi4", serial=f"SN-{secrets.token_hex(4)}")
        first = enroll(store, self.server.device_url, self.server.ca_cert, identity)
        if first.status == "pending":
            accepted = self.http.post(f"/api/v1/devices/{first.device_id}/accept", headers=self.headers)
            assert accepted.status_code < 300, accepted.text
            assert enroll(store, self.server.device_url, self.server.ca_cert, identity).status == "accepted"
        ca_pem = store.load_ca_pem()
        assert ca_pem is not None
        return first.device_id, tls_context(ca_pem, store)

    def deploy(self, name: str, device_id: str) -> None:
        created = self.http.post(
            "/api/v1/deployments",
            json={
                "name": f"deploy-{name}",
                "release": name,
                "version": "1.0",
                "target": {"devices": [device_id]},
            },
            headers=self.headers,
        )
        assert created.status_code == 201, created.text

    def tuf_dir(self, directory: Path) -> Path:
        for name, root in self.roots.items():
            (directory / name).mkdir(parents=True)
            (directory / name / "root.json").write_bytes(root)
        return directory


@pytest.fixture(scope="module")
def fleet(running_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    assert running_server.admin_password
    with httpx2.Client(base_url=running_server.management_url, timeout=30) as http:
        first = http.post(
            "/api/v1/auth/sign-in", json={"username": "admin", "password": running_server.admin_password}
        )
        assert first.status_code == 200, first.text
        changed = http.post(
            "/api/v1/me/password",
            json={"current_password": running_server.admin_password, "new_password": NEW_ADMIN_PASSWORD},
            headers={"authorization": f"Bearer {first.json()['access_token']}"},
        )
        assert changed.status_code == 204, changed.text
        signed_in = http.post(
            "/api/v1/auth/sign-in", json={"username": "admin", "password": NEW_ADMIN_PASSWORD}
        )
        headers = {"authorization": f"Bearer {signed_in.json()['access_token']}"}

        keys = tmp_path_factory.mktemp("release-keys") / "keys"
        init_keys(keys, threshold=1, count=1)
        online = online_keys_from_json(http.get("/api/v1/repository/online-keys").json())
        trust = build_initial_trust(keys, online, in_days(365))
        installed = http.post(
            "/api/v1/repository/trust",
            json={
                "root": trust.root.to_dict(),
                "targets": trust.targets.to_dict(),
                "director_root": trust.director_root.to_dict(),
            },
            headers=headers,
        )
        assert installed.status_code == 201, installed.text
        # The device's trusted roots, as whoever provisions it fetches them.
        roots = {
            "image": http.get("/api/v1/repository/metadata/1.root.json", headers=headers).content,
            "director": http.get("/api/v1/director/metadata/1.root.json", headers=headers).content,
        }
        yield Fleet(running_server, http, headers, keys, roots)


@dataclass
class Device:
    checker: UpdateChecker
    device_id: str
    tls: ssl.SSLContext


def a_device(fleet: Fleet, tmp_path: Path) -> Device:
    device_id, tls = fleet.device(tmp_path / "agent")
    checker = UpdateChecker(fleet.tuf_dir(tmp_path / "tuf"), fleet.server.device_url, tls, device_id, "rpi4")
    return Device(checker, device_id, tls)


def assigned(fleet: Fleet, tmp_path: Path, payload: bytes, counter: int) -> tuple[Device, VerifiedUpdate]:
    name = f"fw-{secrets.token_hex(4)}"
    fleet.release(tmp_path, name, payload, counter)
    device = a_device(fleet, tmp_path)
    assert device.checker.check(0) is None, "nothing deployed yet"
    fleet.deploy(name, device.device_id)
    update = device.checker.check(0)
    assert update is not None
    assert update.target_path == f"{name}/1.0/{name}.bin"
    return device, update


def test_check_download_and_refuse_an_older_counter(fleet: Fleet, tmp_path: Path) -> None:
    payload = secrets.token_bytes(300_000)
    device, update = assigned(fleet, tmp_path, payload, counter=3)
    assert update.length == len(payload)
    assert update.hashes["sha256"] == hashlib.sha256(payload).hexdigest()
    assert update.release_counter == 3
    assert update.release["module"] == "file"
    assert update.release["device_types"] == ["rpi4"]

    dest = device.checker.download(update, tmp_path / "payload.bin")
    assert dest.read_bytes() == payload
    assert not dest.with_suffix(".part").exists()

    with pytest.raises(UpdateRefused) as caught:
        device.checker.check(4)
    assert caught.value.code == "rollback_attack"
    assert device.checker.check(3) == update, "the installed counter itself is not a rollback"


def test_another_devices_certificate_is_refused_the_director(fleet: Fleet, tmp_path: Path) -> None:
    # The server answers each device with its own director metadata; a checker that believes it is
    # another device sees an assignment naming someone else.
    device, _ = assigned(fleet, tmp_path, b"payload", counter=1)
    impostor = UpdateChecker(
        fleet.tuf_dir(tmp_path / "other-tuf"), fleet.server.device_url, device.tls, "dev_someone_else", "rpi4"
    )
    with pytest.raises(UpdateRefused) as caught:
        impostor.check(0)
    assert caught.value.code == "device_mismatch"


def test_a_connection_cut_mid_transfer_resumes(fleet: Fleet, tmp_path: Path) -> None:
    payload = secrets.token_bytes(400_000)
    device, update = assigned(fleet, tmp_path, payload, counter=2)
    with cutting_proxy(fleet.server.device_url, cut_after=150_000) as proxy:
        through_proxy = UpdateChecker(device.checker.tuf_dir, proxy.url, device.tls, device.device_id, "rpi4")
        dest = through_proxy.download(update, tmp_path / "payload.bin")
    assert dest.read_bytes() == payload
    assert proxy.connections >= 2
    assert proxy.cuts == 1


def test_extra_or_altered_bytes_from_the_target_host_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    payload = secrets.token_bytes(50_000)
    device, update = assigned(fleet, tmp_path, payload, counter=1)
    served = consistent_target_path(update)
    dest = tmp_path / "payload.bin"
    # Where a 307 would lead (an object store): a host that the signed metadata does not vouch for.
    with repository_server() as store:
        store.mount("/device/v1/repository/targets/", {served: payload})
        elsewhere = UpdateChecker(device.checker.tuf_dir, store.url, device.tls, device.device_id, "rpi4")
        store.behaviour.extra_bytes = b"appended"
        with pytest.raises(UpdateRefused) as too_long:
            elsewhere.download(update, dest)
        assert too_long.value.code == "download_too_large"
        store.behaviour.extra_bytes = b""
        store.behaviour.replace_with = bytes(len(payload))
        with pytest.raises(UpdateRefused) as altered:
            elsewhere.download(update, dest)
        assert altered.value.code == "hash_mismatch"
    assert not dest.exists()
    assert not dest.with_suffix(".part").exists()


# --- a TCP proxy that breaks one transfer ---------------------------------------------------------------


@dataclass
class CuttingProxy:
    url: str
    connections: int = 0
    cuts: int = 0


@contextmanager
def cutting_proxy(upstream_url: str, cut_after: int) -> Iterator[CuttingProxy]:
    """Forwards TCP (TLS passes through untouched) to the device listener; the first connection that
    carries more than `cut_after` bytes towards the client is closed there."""
    host, port = upstream_url.removeprefix("https://").rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = CuttingProxy(f"https://127.0.0.1:{listener.getsockname()[1]}")
    lock = threading.Lock()
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket, may_cut: bool) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if may_cut:
                    with lock:
                        cut_now = proxy.cuts == 0 and sent + len(data) > cut_after
                        if cut_now:
                            proxy.cuts += 1
                    if cut_now:
                        sink.sendall(data[: cut_after - sent])
                        break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            proxy.connections += 1
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client, True), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)

"""Upload and download throughput of a release artifact through a real server on loopback.

    python -m bench.release_throughput [--megabytes 200]

Starts `fleetkeeper serve` (embedded default) in a temporary directory, makes offline keys and
installs trust, creates and signs an artifact of N MB of random bytes, then measures

- upload: `fleetkeeper release upload`'s client (8 MiB chunks, SHA-256 and verification on the
  server included) until the release is accepted;
- download: a device fetching the target over mTLS from the device listener;
- reference: the same client downloading the same payload from a plain static HTTP server
  (Python's ThreadingHTTPServer) on loopback, in the same run.

Prints one JSON line per measurement. `served_release` (the server, the uploaded release and an
enrolled device's credentials) is shared with bench/download.py, which compares against nginx.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
from cryptography.hazmat.primitives import serialization
from tests.conftest import ADMIN_PASSWORD, RunningServer, start_server
from tests.helpers.devices import FakeDevice
from tuf.api.metadata import Metadata

from fleetkeeper.releases.artifact import create_artifact
from fleetkeeper.releases.keys import init_keys
from fleetkeeper.releases.signing import sign_release
from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json
from fleetkeeper.releases.upload_client import upload

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ServedRelease:
    """A running server holding one uploaded release, and a device enrolled to download it."""

    server: RunningServer
    work: Path
    payload: Path  # the target's bytes, also on disk here for the references to serve
    size: int
    target_url: str  # on the device listener (mTLS)
    device_cert: Path
    device_key: Path
    upload_seconds: float

    @property
    def ca_cert(self) -> Path:
        return self.server.ca_cert

    def mtls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.device_cert), str(self.device_key))
        return context


def _admin_client(server: RunningServer) -> tuple[httpx2.Client, dict[str, str]]:
    management = httpx2.Client(base_url=server.management_url, timeout=600)
    first = management.post(
        "/api/v1/auth/sign-in", json={"username": "admin", "password": server.admin_password}
    )
    admin = {"authorization": f"Bearer {first.json()['access_token']}"}
    management.post(
        "/api/v1/me/password",
        json={"current_password": server.admin_password, "new_password": ADMIN_PASSWORD},
        headers=admin,
    )
    tokens = management.post("/api/v1/auth/sign-in", json={"username": "admin", "password": ADMIN_PASSWORD})
    return management, {"authorization": f"Bearer {tokens.json()['access_token']}"}


def _enroll_device(
    server: RunningServer, management: httpx2.Client, admin: dict[str, str], work: Path
) -> None:
    device = FakeDevice()
    tls = ssl.create_default_context(cafile=str(server.ca_cert))
    with httpx2.Client(verify=tls, timeout=60) as device_http:
        enrolled = device_http.post(f"{server.device_url}/device/v1/enroll", json=device.enroll_body()).json()
        management.post(f"/api/v1/devices/{enrolled['device_id']}/accept", headers=admin).raise_for_status()
        answer = device_http.post(f"{server.device_url}/device/v1/enroll", json=device.enroll_body()).json()
    (work / "device.crt").write_text(answer["certificate"])
    (work / "device.key").write_bytes(
        device.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@contextmanager
def served_release(megabytes: int) -> Iterator[ServedRelease]:
    """Server, keys, trust, a signed release of `megabytes` MiB of random bytes uploaded (timed),
    and an accepted device with a certificate; everything in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="fk-bench-") as temporary:
        work = Path(temporary)
        server = start_server(work / "data", timeout=60)
        try:
            management, admin = _admin_client(server)
            token = management.post("/api/v1/me/tokens", json={"name": "bench"}, headers=admin).json()[
                "secret"
            ]
            keys = work / "keys"
            init_keys(keys, threshold=1, count=1)
            online = online_keys_from_json(management.get("/api/v1/repository/online-keys").json())
            expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
            trust = build_initial_trust(keys, online, expires)
            management.post(
                "/api/v1/repository/trust",
                json={k: getattr(trust, k).to_dict() for k in ("root", "targets", "director_root")},
                headers=admin,
            ).raise_for_status()

            payload = work / "payload.bin"
            with payload.open("wb") as handle:
                for _ in range(megabytes):
                    handle.write(os.urandom(1024 * 1024))
            artifact = work / "bench.fkr"
            create_artifact(
                artifact,
                name="bench",
                version="1.0",
                release_counter=1,
                module="file",
                device_types=["rpi4"],
                depends={},
                provides={},
                payload_paths=[payload],
                sbom_path=None,
            )
            current = Metadata.from_bytes(
                management.get("/api/v1/repository/metadata/targets.json", headers=admin).content
            )
            sign_release(artifact, keys, current, expires)
            started = time.perf_counter()
            release = upload(artifact, server.management_url, token, tags=[])
            upload_seconds = time.perf_counter() - started

            _enroll_device(server, management, admin, work)
            management.close()
            target = f"bench/1.0/{release['hashes']['sha256']}.payload.bin"
            yield ServedRelease(
                server=server,
                work=work,
                payload=payload,
                size=megabytes * 1024 * 1024,
                target_url=f"{server.device_url}/device/v1/repository/targets/{target}",
                device_cert=work / "device.crt",
                device_key=work / "device.key",
                upload_seconds=upload_seconds,
            )
        finally:
            server.stop()


def download(client: httpx2.Client, url: str) -> int:
    """Bytes received by streaming `url` through `client`, in 1 MiB reads."""
    received = 0
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(CHUNK):
            received += len(chunk)
    return received


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    with served_release(args.megabytes) as served:
        print(
            json.dumps(
                {
                    "benchmark": "release_upload",
                    "megabytes": args.megabytes,
                    "seconds": round(served.upload_seconds, 2),
                    "mb_per_s": round(args.megabytes / served.upload_seconds, 1),
                }
            )
        )
        with httpx2.Client(verify=served.mtls_context(), timeout=600) as fetcher:
            started = time.perf_counter()
            received = download(fetcher, served.target_url)
            download_seconds = time.perf_counter() - started
        assert received == served.size

        static = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served.work))
        )
        threading.Thread(target=static.serve_forever, daemon=True).start()
        try:
            with httpx2.Client(timeout=600) as plain:
                started = time.perf_counter()
                reference = download(plain, f"http://127.0.0.1:{static.server_address[1]}/payload.bin")
                reference_seconds = time.perf_counter() - started
        finally:
            static.shutdown()
        assert reference == served.size
        print(
            json.dumps(
                {
                    "benchmark": "release_download",
                    "megabytes": args.megabytes,
                    "mb_per_s": round(args.megabytes / download_seconds, 1),
                    "reference": "python static http server, plain HTTP",
                    "reference_mb_per_s": round(args.megabytes / reference_seconds, 1),
                    "ratio": round(reference_seconds / download_seconds, 2),
                }
            )
        )


if __name__ == "__main__":
    main()

"""The whole software-trust path on a real server: keys and trust made offline with the CLI, a
release created, signed and uploaded, then fetched by an unmodified python-tuf Updater over mTLS;
refused uploads leave nothing behind; root rotation; the director serves each device only its own."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from tests.conftest import ClientCertificate
from tests.helpers.device_listener import Fleet, fleet  # noqa: F401  (the fixture)
from tests.helpers.devices import FakeDevice


class MtlsFetcher(FetcherInterface):
    """What the agent's fetcher does: TLS to the device listener with the device certificate."""

    def __init__(self, ca: Path, client: ClientCertificate) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(client.cert), str(client.key))
        self.http = httpx2.Client(verify=context, timeout=30, follow_redirects=True)

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self.http.get(url)
        if response.status_code != 200:
            raise DownloadHTTPError(f"{url}: {response.status_code}", response.status_code)
        yield response.content


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETKEEPER_")}
    if token:
        env["FLEETKEEPER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "fleetkeeper", *args], capture_output=True, text=True, env=env, timeout=120
    )


@dataclass
class Release:
    fleet: Fleet
    token: str
    keys: Path
    workdir: Path

    def make(self, name: str, version: str, counter: int, payload: bytes, *, sign: bool = True) -> Path:
        source = self.workdir / f"{name}-{version}.bin"
        source.write_bytes(payload)
        artifact = self.workdir / f"{name}-{version}.fkr"
        created = cli(
            "release",
            "create",
            str(source),
            "--name",
            name,
            "--version",
            version,
            "--counter",
            str(counter),
            "--type",
            "file",
            "--device-type",
            "rpi4",
            "-o",
            str(artifact),
        )
        assert created.returncode == 0, created.stderr
        if sign:
            signed = cli(
                "release",
                "sign",
                str(artifact),
                "--keys",
                str(self.keys),
                "--server",
                self.fleet.server.management_url,
                token=self.token,
            )
            assert signed.returncode == 0, signed.stderr
        return artifact

    def upload(self, artifact: Path) -> subprocess.CompletedProcess[str]:
        return cli(
            "release", "upload", str(artifact), "--server", self.fleet.server.management_url, token=self.token
        )


@pytest.fixture(scope="module")
def release(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Release:  # noqa: F811
    workdir = tmp_path_factory.mktemp("release")
    with fleet.management() as http:
        token = http.post("/api/v1/me/tokens", json={"name": "release-engineer"}).json()["secret"]
    keys = workdir / "keys"
    assert cli("keys", "init", str(keys), "--threshold", "1", "--count", "1").returncode == 0
    initialized = cli(
        "trust", "init", "--keys", str(keys), "--server", fleet.server.management_url, token=token
    )
    assert initialized.returncode == 0, initialized.stderr
    return Release(fleet, token, keys, workdir)


def updater(owner: Fleet, client: ClientCertificate, directory: Path, which: str = "repository") -> Updater:
    metadata = directory / "metadata"
    targets = directory / "targets"
    metadata.mkdir(parents=True, exist_ok=True)
    targets.mkdir(parents=True, exist_ok=True)
    base = f"{owner.server.device_url}/device/v1/{which}"
    with owner.management() as http:
        root_path = (
            "/api/v1/repository/metadata/1.root.json"
            if which == "repository"
            else "/api/v1/director/metadata/1.root.json"
        )
        root = http.get(root_path).content
    return Updater(
        str(metadata),
        f"{base}/metadata/",
        str(targets),
        f"{base}/targets/",
        fetcher=MtlsFetcher(owner.server.ca_cert, client),
        bootstrap=root,
    )


def test_unmodified_updater_downloads_a_signed_release(release: Release, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    uploaded = release.upload(release.make("firmware", "1.0.0", 1, payload))
    assert uploaded.returncode == 0, uploaded.stderr
    device = FakeDevice()
    client = release.fleet.accepted(device, tmp_path)
    client_updater = updater(release.fleet, client, tmp_path / "device")
    client_updater.refresh()
    info = client_updater.get_targetinfo("firmware/1.0.0/firmware-1.0.0.bin")
    assert info is not None
    assert info.custom["fleetkeeper"]["release_counter"] == 1
    path = client_updater.download_target(info)
    assert Path(path).read_bytes() == payload
    with release.fleet.management() as http:
        shown = http.get("/api/v1/releases/firmware/1.0.0").json()
    assert shown["hashes"]["sha256"] == info.hashes["sha256"]
    assert shown["signers"]
    assert shown["device_types"] == ["rpi4"]
    # Range requests on the target (a device resuming a download).
    key = f"firmware/1.0.0/{info.hashes['sha256']}.firmware-1.0.0.bin"
    partial = MtlsFetcher(release.fleet.server.ca_cert, client).http.get(
        f"{release.fleet.server.device_url}/device/v1/repository/targets/{key}",
        headers={"range": "bytes=100-199"},
    )
    assert partial.status_code == 206
    assert partial.content == payload[100:200]


def _state(release: Release) -> tuple[int, int, list[str]]:
    with release.fleet.management() as http:
        releases = len(http.get("/api/v1/releases").json()["items"])
        timestamp = json.loads(http.get("/api/v1/repository/metadata/timestamp.json").content)["signed"][
            "version"
        ]
    objects = sorted(
        str(p.relative_to(release.fleet.server.data_dir))
        for p in (release.fleet.server.data_dir / "objects").rglob("*")
        if p.is_file()
    )
    return releases, timestamp, objects


def test_refused_uploads_leave_nothing_behind(release: Release) -> None:
    release.upload(release.make("base", "1.0.0", 1, b"base payload"))
    before = _state(release)
    unsigned = release.upload(release.make("nosig", "1.0.0", 1, b"x", sign=False))
    assert unsigned.returncode == 1
    assert "invalid_artifact" in unsigned.stderr
    stale = release.make("stale", "1.0.0", 1, b"stale")
    other = release.make("other", "1.0.0", 1, b"other")  # signed against the same current targets
    assert release.upload(other).returncode == 0
    after_other = _state(release)
    refused = release.upload(stale)
    assert refused.returncode == 1
    assert "stale_metadata_version" in refused.stderr
    assert _state(release) == after_other
    assert before[0] + 1 == after_other[0]
    assert not list((release.fleet.server.data_dir / "uploads").glob("*")), "no staging file is left"


def test_root_rotation_reaches_a_client_holding_v1(release: Release, tmp_path: Path) -> None:
    device = FakeDevice()
    client = release.fleet.accepted(device, tmp_path)
    holder = updater(release.fleet, client, tmp_path / "holder")
    holder.refresh()
    second, third = tmp_path / "keys2", tmp_path / "keys3"
    for new in (second, third):
        assert cli("keys", "init", str(new), "--threshold", "1", "--count", "1").returncode == 0
    rotated = cli(
        "trust",
        "rotate-root",
        "--keys",
        str(release.keys),
        "--new-keys",
        str(second),
        "--server",
        release.fleet.server.management_url,
        token=release.token,
    )
    assert rotated.returncode == 0, rotated.stderr
    rotated = cli(
        "trust",
        "rotate-root",
        "--keys",
        str(second),
        "--new-keys",
        str(third),
        "--server",
        release.fleet.server.management_url,
        token=release.token,
    )
    assert rotated.returncode == 0, rotated.stderr
    holder = updater(release.fleet, client, tmp_path / "holder")
    holder.refresh()
    trusted = json.loads((tmp_path / "holder" / "metadata" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 3
    # A v4 signed only by new keys (not by v3's) is refused.
    fourth = tmp_path / "keys4"
    assert cli("keys", "init", str(fourth), "--threshold", "1", "--count", "1").returncode == 0
    forged = cli(
        "trust",
        "rotate-root",
        "--keys",
        str(fourth),
        "--new-keys",
        str(fourth),
        "--server",
        release.fleet.server.management_url,
        token=release.token,
    )
    assert forged.returncode == 1
    assert (
        "below_threshold" in forged.stderr
        or "bad_signature" in forged.stderr
        or "unknown_key" in forged.stderr
    )
    shutil.rmtree(tmp_path / "holder")


def test_offline_bundle_verifies_with_the_same_trust_root(release: Release, tmp_path: Path) -> None:
    import tarfile
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    payload = os.urandom(50_000)
    assert release.upload(release.make("offline", "1.0.0", 4, payload)).returncode == 0
    bundle = tmp_path / "offline.fkb"
    exported = cli(
        "bundle",
        "export",
        "--release",
        "offline",
        "--version",
        "1.0.0",
        "--device-type",
        "rpi4",
        "--server",
        release.fleet.server.management_url,
        "-o",
        str(bundle),
        token=release.token,
    )
    assert exported.returncode == 0, exported.stderr
    wrong = cli(
        "bundle",
        "export",
        "--release",
        "offline",
        "--version",
        "1.0.0",
        "--device-type",
        "x86",
        "--server",
        release.fleet.server.management_url,
        "-o",
        str(tmp_path / "x.fkb"),
        token=release.token,
    )
    assert wrong.returncode == 1
    assert "incompatible_device_type" in wrong.stderr
    site = tmp_path / "site"
    with tarfile.open(bundle) as tar:
        tar.extractall(site, filter="data")
    manifest = json.loads((site / "bundle.json").read_text())
    assert manifest["target_path"] == "offline/1.0.0/offline-1.0.0.bin"
    # No network to the server: the bundle alone, served from a local directory.
    handler = partial(SimpleHTTPRequestHandler, directory=str(site))
    local = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{local.server_address[1]}"
        (tmp_path / "meta").mkdir()
        (tmp_path / "dl").mkdir()
        offline = Updater(
            str(tmp_path / "meta"),
            f"{base}/metadata/",
            str(tmp_path / "dl"),
            f"{base}/targets/",
            bootstrap=(site / "metadata" / "1.root.json").read_bytes(),
        )
        offline.refresh()
        info = offline.get_targetinfo(manifest["target_path"])
        assert info is not None
        assert Path(offline.download_target(info)).read_bytes() == payload
    finally:
        local.shutdown()

"""TUF repositories built in the test with python-tuf's Metadata API, and a loopback HTTP server that
serves them (HTTP Range, request counts) and can misbehave on purpose: send extra bytes, cut a transfer
once, redirect to another host."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

ROLES = ("root", "targets", "snapshot", "timestamp")


def in_days(days: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)


@dataclass
class Repository:
    """One TUF repository with one Ed25519 key per role, consistent snapshots, files by served name."""

    signers: dict[str, CryptoSigner] = field(
        default_factory=lambda: {role: CryptoSigner.generate_ed25519() for role in ROLES}
    )
    root: Metadata[Root] = field(init=False)
    targets: Metadata[Targets] = field(init=False)
    snapshot: Metadata[Snapshot] = field(init=False)
    timestamp: Metadata[Timestamp] = field(init=False)
    payloads: dict[str, bytes] = field(default_factory=dict)  # by served target name

    def __post_init__(self) -> None:
        root = Root(expires=in_days(365), consistent_snapshot=True)
        for role, signer in self.signers.items():
            root.add_key(signer.public_key, role)
        self.root = Metadata(root)
        self.root.sign(self.signers["root"])
        self.targets = Metadata(Targets(expires=in_days(30)))
        self.snapshot = Metadata(Snapshot(expires=in_days(7)))
        self.timestamp = Metadata(Timestamp(expires=in_days(1)))
        self.publish()

    def root_bytes(self) -> bytes:
        return self.root.to_bytes()

    def add_target(self, path: str, data: bytes, custom: dict[str, Any] | None = None) -> TargetFile:
        target = TargetFile.from_data(path, data, ["sha256"])
        if custom is not None:
            target.unrecognized_fields["custom"] = custom
        self.targets.signed.targets[path] = target
        directory, _, name = path.rpartition("/")
        served = f"{target.hashes['sha256']}.{name}"
        self.payloads[f"{directory}/{served}" if directory else served] = data
        return target

    def publish(
        self,
        *,
        timestamp_expires: datetime | None = None,
        targets_signer: CryptoSigner | None = None,
    ) -> None:
        """New versions of targets, snapshot and timestamp (signed; `targets_signer` to sign with
        another key than the one root names)."""
        targets, snapshot, timestamp = self.targets.signed, self.snapshot.signed, self.timestamp.signed
        if self.files_published():
            targets.version += 1
            snapshot.version += 1
            timestamp.version += 1
        self.targets.signatures.clear()
        self.targets.sign(targets_signer or self.signers["targets"])
        snapshot.meta["targets.json"] = MetaFile(version=targets.version)
        self.snapshot.signatures.clear()
        self.snapshot.sign(self.signers["snapshot"])
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        timestamp.expires = timestamp_expires or in_days(1)
        self.timestamp.signatures.clear()
        self.timestamp.sign(self.signers["timestamp"])
        self._published = True

    def files_published(self) -> bool:
        return getattr(self, "_published", False)

    def metadata_files(self) -> dict[str, bytes]:
        return {
            f"{self.root.signed.version}.root.json": self.root.to_bytes(),
            "timestamp.json": self.timestamp.to_bytes(),
            f"{self.snapshot.signed.version}.snapshot.json": self.snapshot.to_bytes(),
            f"{self.targets.signed.version}.targets.json": self.targets.to_bytes(),
        }


@dataclass
class Behaviour:
    """How the server misbehaves for target files (paths that do not end in .json)."""

    extra_bytes: bytes = b""
    replace_with: bytes | None = None
    cut_after: int | None = None  # close the connection after this many body bytes, once
    redirect_to: str | None = None  # base URL to 307 target requests to


class RepositoryServer:
    """Serves repositories under URL prefixes: `mount("/metadata/", files)`."""

    def __init__(self) -> None:
        self.mounts: dict[str, dict[str, bytes]] = {}
        self.requests: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.behaviour = Behaviour()
        self._lock = threading.Lock()
        self.url = ""

    def mount(self, prefix: str, files: dict[str, bytes]) -> None:
        self.mounts[prefix] = files

    def serve_repository(self, repository: Repository, metadata: str, targets: str) -> None:
        self.mount(metadata, repository.metadata_files())
        self.mount(targets, repository.payloads)

    def lookup(self, path: str) -> bytes | None:
        for prefix, files in self.mounts.items():
            if path.startswith(prefix):
                return files.get(path[len(prefix) :])
        return None

    def take_cut(self) -> int | None:
        with self._lock:
            cut, self.behaviour.cut_after = self.behaviour.cut_after, None
            return cut


def _handler(server: RepositoryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            server.requests[path] += 1
            data = server.lookup(path)
            if data is None:
                self._answer(404, b"not found")
                return
            if path.endswith(".json"):
                self._answer(200, data)
                return
            behaviour = server.behaviour
            if behaviour.redirect_to is not None:
                self.send_response(307)
                self.send_header("Location", behaviour.redirect_to.rstrip("/") + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = (behaviour.replace_with if behaviour.replace_with is not None else data) + (
                behaviour.extra_bytes
            )
            start = 0
            requested = self.headers.get("Range")
            if requested:
                server.ranges.append(requested)
                start = int(requested.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self._answer(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    return
            status = 206 if requested else 200
            headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"} if requested else {}
            cut = server.take_cut()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if cut is not None:
                self.wfile.write(body[start : start + cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def repository_server() -> Iterator[RepositoryServer]:
    state = RepositoryServer()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    http.daemon_threads = True
    state.url = f"http://127.0.0.1:{http.server_address[1]}"
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        http.shutdown()
        http.server_close()
        thread.join()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

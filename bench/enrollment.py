"""Enrollment rate: certificates issued per second through the real server, against the CA alone.

    python -m bench.enrollment --devices 2000 --concurrency 16 [--backend postgresql|sqlite]
    python -m bench.enrollment --devices 2000 --concurrency 16 --profile /tmp/enroll.txt

Starts `fleetkeeper serve` (free ports, temporary data directory; on a fresh PostgreSQL database
from bench/fleet.py, or the embedded SQLite default), creates one auto-accept enrollment token for
all devices as the administrator it made at its first start (such a token acts for its creator),
and makes N devices: an Ed25519 key each and its enrollment request signed the way
the agent signs it (`fleetkeeper_agent.signing.signed_envelope`), all before the clock starts.
Then `--concurrency` clients (keep-alive HTTPS connections to the device listener, httpx2, in this
process) send them to `POST /device/v1/enroll`. Every answer must be 200 `accepted` with a
certificate that the fleet CA signed, naming the device id the answer gives, for the device's key.

References in the same run:

- `ca`: the fleet CA issuing the same client certificates in this process, one after the other
  (`CertificateAuthority.issue`, the `cryptography` signing that enrollment does);
- `refused`: the same clients sending requests whose signature does not verify — the route, its
  TLS, middleware, rate limiter and signature check, refused before any database work (400).

Prints one JSON line: enrollments/s with p50/p99 latency, both reference rates, `ratio`
(enrollments/s over CA certificates/s) and the errors. The server's per-address and per-network
enrollment limits are lifted for the run. `--profile FILE` samples the server with py-spy while it
enrolls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.conftest import RunningServer, start_server

from bench.fleet import fresh_database
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.service import list_users, user_grants
from fleetkeeper.core.db import Database
from fleetkeeper.core.pki import PkiPaths, load_ca, load_certificate
from fleetkeeper.devices.enrollment_tokens import create_token
from fleetkeeper_agent.signing import b64url_encode, signed_envelope

ENROLL_PATH = "/device/v1/enroll"
CA_SAMPLE = 500  # certificates the CA reference issues


@dataclass(frozen=True)
class Device:
    key: ed25519.Ed25519PrivateKey
    public_pem: str
    body: dict[str, str]


@dataclass
class Step:
    seconds: float
    latencies: list[float]
    answers: list[tuple[int, dict[str, Any]]]


def make_devices(count: int, token: str) -> list[Device]:
    devices = []
    for number in range(count):
        key = ed25519.Ed25519PrivateKey.generate()
        pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        payload = {
            "type": "fleetkeeper.enroll.v1",
            "identity": {"device_type": "rpi4", "serial": f"SN-{number:08d}", "mac": None, "attributes": {}},
            "public_key": pem,
            "enrollment_token": token,
        }
        devices.append(Device(key, pem, signed_envelope(payload, key.sign)))
    return devices


def forged(body: dict[str, str]) -> dict[str, str]:
    """The same request with a signature that does not verify."""
    return {"payload": body["payload"], "signature": b64url_encode(bytes(64))}


async def send_all(url: str, context: ssl.SSLContext, bodies: list[dict[str, str]], concurrency: int) -> Step:
    """Every body once, `concurrency` keep-alive connections each sending one after the other."""
    latencies: list[float] = []
    answers: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(bodies)
    queue = iter(range(len(bodies)))
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, verify=context, limits=limits, timeout=120) as client:

        async def worker() -> None:
            for index in queue:
                started = time.perf_counter()
                try:
                    response = await client.post(ENROLL_PATH, json=bodies[index])
                    answers[index] = (response.status_code, response.json())
                except (httpx2.HTTPError, ValueError) as error:
                    answers[index] = (-1, {"error": repr(error)})
                latencies.append(time.perf_counter() - started)

        # Connections opened before the clock starts: one small request each.
        await asyncio.gather(*(client.get("/device/v1/crl.pem") for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Step(seconds, latencies, answers)


def check_enrolled(
    devices: list[Device], answers: list[tuple[int, dict[str, Any]]], ca: x509.Certificate
) -> list[str]:
    """What is wrong with the answers: each a certificate from the CA, for this key and device id."""
    problems = []
    seen = set()
    for device, (status, body) in zip(devices, answers, strict=True):
        if status != 200 or body.get("status") != "accepted":
            problems.append(f"HTTP {status}: {json.dumps(body)[:200]}")
            continue
        certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError) as error:
            problems.append(f"{body['device_id']}: not issued by the fleet CA ({error})")
            continue
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        key_pem = certificate.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if [name.value for name in names] != [body["device_id"]] or key_pem.decode() != device.public_pem:
            problems.append(f"{body['device_id']}: certificate for another name or key")
        seen.add(body["device_id"])
    if len(seen) != len(devices) - len(problems):
        problems.append(f"{len(seen)} distinct device ids for {len(devices)} devices")
    return problems


def ca_rate(pki_dir: Path, devices: list[Device]) -> float:
    """Certificates per second the fleet CA issues here, one after the other."""
    paths = PkiPaths(pki_dir)
    ca = load_ca(paths)
    keys = [device.key.public_key() for device in devices[:CA_SAMPLE]]
    started = time.perf_counter()
    for number, key in enumerate(keys):
        ca.issue(key, f"dev_{number:026d}", client=True, validity=timedelta(days=30))
    return len(keys) / (time.perf_counter() - started)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


@contextlib.contextmanager
def profiled(pid: int, out: str | None) -> Any:
    """py-spy sampling the server for the duration of the block (collapsed stacks)."""
    if out is None:
        yield
        return
    beside = Path(sys.executable).with_name("py-spy")
    command = [str(beside) if beside.exists() else "py-spy", "record", "--pid", str(pid)]
    spy = subprocess.Popen(
        [*command, "--rate", "250", "--nonblocking", "--format", "raw", "--output", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # it attaches
    try:
        yield
    finally:
        spy.send_signal(2)  # SIGINT: it writes what it sampled
        spy.wait(timeout=60)


@contextlib.asynccontextmanager
async def database_url(backend: str, data_dir: Path) -> AsyncIterator[str | None]:
    """The server's database: a fresh PostgreSQL one, or None for the embedded SQLite default."""
    if backend == "sqlite":
        yield None
        return
    async with fresh_database() as url:
        yield url


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fk-enroll-") as work_dir:
        data_dir = Path(work_dir) / "data"
        async with database_url(args.backend, data_dir) as url:
            env = {
                "FLEETKEEPER_ENROLLMENT_LIMIT_PER_ADDRESS": "1000000/minute",
                "FLEETKEEPER_ENROLLMENT_LIMIT_PER_NETWORK": "1000000/minute",
            }
            server = await asyncio.to_thread(start_server, data_dir, url, env, 120)
            try:
                return await _measure(
                    args, server, url or f"sqlite+aiosqlite:///{data_dir / 'fleetkeeper.db'}"
                )
            finally:
                server.stop()


async def first_admin(database: Database) -> Principal:
    """The administrator the server made at its first start, with their grants: an auto-accepting
    token acts for its creator, who must be a real user holding devices:manage everywhere."""
    async with database.session() as session:
        [admin] = await list_users(session, limit=1, after=None)
        grants = await user_grants(session, admin.id)
    return Principal(user_id=admin.id, username=admin.username, grants=grants, method="password")


async def _measure(args: argparse.Namespace, server: RunningServer, url: str) -> dict[str, Any]:
    database = Database(url)
    try:
        principal = await first_admin(database)
        runtime: Any = SimpleNamespace(database=database)
        _, token = await create_token(
            runtime,
            principal,
            name="enrollment benchmark",
            expires_in=timedelta(hours=1),
            max_uses=args.devices,
            auto_accept=True,
            group_name=None,
        )
    finally:
        await database.dispose()
    started = time.perf_counter()
    devices = await asyncio.to_thread(make_devices, args.devices, token)
    print(
        f"{args.devices} keys and signed requests in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    context = ssl.create_default_context(cafile=str(server.ca_cert))
    ca_certificate = load_certificate(server.ca_cert)
    refused_bodies = [forged(device.body) for device in devices]
    refused = await send_all(server.device_url, context, refused_bodies, args.concurrency)
    refused_errors = sum(
        1 for status, body in refused.answers if status != 400 or body.get("code") != "invalid_signature"
    )
    print(f"refused: {len(devices) / refused.seconds:.1f}/s", file=sys.stderr)
    with profiled(server.process.pid, args.profile):
        enrolled = await send_all(
            server.device_url, context, [device.body for device in devices], args.concurrency
        )
    problems = check_enrolled(devices, enrolled.answers, ca_certificate)
    print(f"enrolled: {len(devices) / enrolled.seconds:.1f}/s, problems {problems[:3]}", file=sys.stderr)
    ca_per_s = ca_rate(server.data_dir / "pki", devices)
    per_s = len(devices) / enrolled.seconds
    return {
        "benchmark": "enrollment",
        "backend": args.backend,
        "devices": args.devices,
        "concurrency": args.concurrency,
        "enrollments_per_s": round(per_s, 1),
        "p50_ms": round(_percentile(enrolled.latencies, 0.5) * 1000, 1),
        "p99_ms": round(_percentile(enrolled.latencies, 0.99) * 1000, 1),
        "ca_certificates_per_s": round(ca_per_s, 1),
        "refused_per_s": round(len(devices) / refused.seconds, 1),
        "ratio": round(per_s / ca_per_s, 4),
        "ratio_to_refused": round(per_s / (len(devices) / refused.seconds), 3),
        "errors": len(problems) + refused_errors,
        "mean_ms": round(statistics.fmean(enrolled.latencies) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.enrollment", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--devices", type=int, default=2000, help="devices that enroll (default 2,000)")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive client connections")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--profile", help="write py-spy's collapsed stacks of the server while it enrolls")
    args = parser.parse_args()
    if args.devices < 1 or args.concurrency < 1:
        parser.error("--devices and --concurrency must be at least 1")
    print(json.dumps(asyncio.run(_run(args))), flush=True)


if __name__ == "__main__":
    main()

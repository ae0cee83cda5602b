"""The server as an operator meets it: first start, health, metrics, problems, request ids."""

from __future__ import annotations

import asyncio
import gc
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import uvicorn
from sqlalchemy import select

from fleetkeeper.access.models import User
from fleetkeeper.access.passwords import verify_password
from fleetkeeper.core.db import Database
from fleetkeeper.server.serve import Listener
from tests.conftest import RunningServer, start_server


def test_healthz_and_readyz(running_server: RunningServer) -> None:
    assert httpx2.get(f"{running_server.management_url}/healthz").json() == {"status": "ok"}
    ready = httpx2.get(f"{running_server.management_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_metrics_count_requests(running_server: RunningServer) -> None:
    httpx2.get(f"{running_server.management_url}/healthz")
    text = httpx2.get(f"{running_server.management_url}/metrics").text
    assert (
        'fleetkeeper_http_requests_total{listener="management",method="GET",route="/healthz",status="200"}'
        in text
    )


def test_unknown_route_is_a_problem_with_request_id(running_server: RunningServer) -> None:
    response = httpx2.get(f"{running_server.management_url}/api/v1/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "not_found"
    assert body["type"] == "urn:fleetkeeper:problem:not_found"
    assert body["request_id"] == response.headers["x-request-id"]
    # Outside the API, an unknown path is the console's page, with its request id too.
    page = httpx2.get(f"{running_server.management_url}/nope")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-request-id"]


def test_request_id_is_taken_from_the_caller_when_well_formed(running_server: RunningServer) -> None:
    given = httpx2.get(f"{running_server.management_url}/healthz", headers={"x-request-id": "trace-12345678"})
    assert given.headers["x-request-id"] == "trace-12345678"
    hostile = httpx2.get(f"{running_server.management_url}/healthz", headers={"x-request-id": "a\tb<script>"})
    assert hostile.headers["x-request-id"] != "a\tb<script>"


def test_request_ids_in_the_log(running_server: RunningServer) -> None:
    response = httpx2.get(
        f"{running_server.management_url}/healthz", headers={"x-request-id": "logged-req-0001"}
    )
    assert response.status_code == 200
    log_path = running_server.data_dir.parent / f"{running_server.data_dir.name}.server.log"
    # The access line is written once the response has gone out: give the server a moment.
    for _ in range(50):
        lines = [line for line in log_path.read_text().splitlines() if "logged-req-0001" in line]
        if lines:
            break
        time.sleep(0.1)
    assert lines
    assert '"path": "/healthz"' in lines[0]


def test_first_start_makes_ca_keys_private_and_an_admin(running_server: RunningServer) -> None:
    pki = running_server.data_dir / "pki"
    for key in ("ca.key", "device-listener.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600
    assert running_server.admin_password
    assert len(running_server.admin_password) >= 20
    log = (running_server.data_dir.parent / f"{running_server.data_dir.name}.server.log").read_text()
    assert running_server.admin_password not in log


def test_second_start_prints_no_password_and_keeps_the_ca(
    server_factory: Callable[..., RunningServer],
) -> None:
    first = server_factory("again")
    ca = (first.data_dir / "pki" / "ca.crt").read_bytes()
    assert first.admin_password
    first.stop()
    second = server_factory("again")
    assert second.admin_password is None
    assert "one-time password" not in second.banner
    assert (second.data_dir / "pki" / "ca.crt").read_bytes() == ca


def test_openapi_is_served(running_server: RunningServer) -> None:
    spec = httpx2.get(f"{running_server.management_url}/api/openapi.json").json()
    assert "/healthz" in spec["paths"]


async def test_first_admin_must_change_the_password(database: Database) -> None:
    from fleetkeeper.access.service import (
        FIRST_ADMIN_USERNAME,
        ensure_first_admin,
        sync_builtin_roles,
        user_role_names,
    )

    await sync_builtin_roles(database)
    password = await ensure_first_admin(database)
    assert password
    assert await ensure_first_admin(database) is None
    async with database.session() as session:
        admin = (await session.scalars(select(User))).one()
    assert admin.username == FIRST_ADMIN_USERNAME
    assert admin.must_change_password
    async with database.session() as session:
        assert await user_role_names(session, admin.id) == ["admin"]
    assert admin.password_hash
    assert admin.password_hash.startswith("$argon2id$")
    assert await verify_password(admin.password_hash, password)
    assert not await verify_password(admin.password_hash, password + "x")


async def test_replicas_starting_together_make_one_admin(database: Database) -> None:
    import asyncio

    from fleetkeeper.access.service import ensure_first_admin, sync_builtin_roles

    await asyncio.gather(*(sync_builtin_roles(database) for _ in range(2)))
    results = await asyncio.gather(*(ensure_first_admin(database) for _ in range(4)))
    assert sum(1 for result in results if result) == 1
    async with database.session() as session:
        assert len((await session.scalars(select(User))).all()) == 1


def test_data_dir_is_private(running_server: RunningServer) -> None:
    assert stat.S_IMODE(Path(running_server.data_dir / "pki").stat().st_mode) == 0o700


def test_a_port_in_use_is_a_clear_error_and_the_password_survives(tmp_path: Path) -> None:
    import socket

    from tests.conftest import run_fleetkeeper

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        data = str(tmp_path / "d")
        first = run_fleetkeeper("serve", "--data-dir", data, "--port", str(port), "--device-port", "0")
    finally:
        taken.close()
    assert first.returncode == 1
    assert "is the port in use" in first.stderr
    assert "Traceback" not in first.stderr
    assert "one-time password:" in first.stdout, "printed before binding, so not lost"
    recovered = run_fleetkeeper("users", "reset-password", "admin", "--data-dir", data)
    assert recovered.returncode == 0, recovered.stderr
    assert "one-time password for admin:" in recovered.stdout
    unknown = run_fleetkeeper("users", "reset-password", "nobody", "--data-dir", data)
    assert unknown.returncode == 1
    assert "user_not_found" in unknown.stderr


def _sign_in_statuses(server: RunningServer, forwarded_for: list[str]) -> list[int]:
    """Failed sign-ins, each under another username and claiming another client address."""
    return [
        httpx2.post(
            f"{server.management_url}/api/v1/auth/sign-in",
            json={"username": f"nobody-{number}", "password": "guess-guess-guess"},
            headers={"x-forwarded-for": address},
        ).status_code
        for number, address in enumerate(forwarded_for)
    ]


def test_forwarded_addresses_are_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    """A local client cannot dodge the per-address sign-in limit by naming another address in
    X-Forwarded-For; behind a proxy listed in `trusted_proxies`, the forwarded address counts
    (each in its own network: the limit counts a /24)."""
    addresses = [f"198.51.{number}.7" for number in range(1, 5)]
    limit = {"FLEETKEEPER_SIGN_IN_LIMIT_PER_ADDRESS": "2/minute"}
    server = start_server(tmp_path / "direct", env=limit)
    try:
        assert _sign_in_statuses(server, addresses) == [401, 401, 429, 429]
    finally:
        server.stop()
    proxied = start_server(
        tmp_path / "proxied", env={**limit, "FLEETKEEPER_TRUSTED_PROXIES": '["127.0.0.1"]'}
    )
    try:
        assert _sign_in_statuses(proxied, addresses) == [401] * 4
    finally:
        proxied.stop()


async def test_a_started_listener_leaves_the_start_up_heap_out_of_collections() -> None:
    """What start-up built is frozen (gc.freeze) once a listener serves: the collector's full
    passes, which walked all of it, were most of the check-ins' latency tail."""

    async def app(scope: object, receive: object, send: object) -> None:  # never called
        raise AssertionError

    gc.unfreeze()
    listener = Listener(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None))
    serving = asyncio.create_task(listener.serve())
    try:
        while not listener.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
    finally:
        listener.should_exit = True
        await serving
        gc.unfreeze()

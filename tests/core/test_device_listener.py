"""The device listener over real TLS: only a valid certificate from the fleet CA gets through,
and the route sees that certificate's subject, over HTTPS and over WSS."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx2
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.conftest import ClientCertificate, RunningServer


def tls_context(server: RunningServer, client: ClientCertificate | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.ca_cert))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def get_whoami(server: RunningServer, client: ClientCertificate | None) -> httpx2.Response:
    with httpx2.Client(verify=tls_context(server, client), timeout=10) as http:
        return http.get(f"{server.device_url}/device/v1/whoami")


async def ws_whoami(server: RunningServer, client: ClientCertificate | None) -> dict[str, str]:
    url = server.device_url.replace("https://", "wss://") + "/device/v1/whoami"
    async with connect(url, ssl=tls_context(server, client), open_timeout=10) as ws:
        message = json.loads(await ws.recv())
        assert isinstance(message, dict)
        return message


def test_valid_certificate_reaches_the_route_with_its_subject(
    running_server: RunningServer, tmp_path: Path
) -> None:
    client = running_server.certificates(tmp_path).issue("dev-0001")
    response = get_whoami(running_server, client)
    assert response.status_code == 200
    body = response.json()
    assert body["common_name"] == "dev-0001"
    assert body["subject"] == "CN=dev-0001,O=fleetkeeper"
    assert response.headers["x-request-id"]


async def test_valid_certificate_over_wss(running_server: RunningServer, tmp_path: Path) -> None:
    client = running_server.certificates(tmp_path).issue("dev-0002")
    identity = await ws_whoami(running_server, client)
    assert identity["common_name"] == "dev-0002"
    assert identity["subject"] == "CN=dev-0002,O=fleetkeeper"


def test_no_certificate_is_refused_with_a_problem(running_server: RunningServer) -> None:
    response = get_whoami(running_server, None)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "client_certificate_required"


async def test_no_certificate_is_refused_over_wss(running_server: RunningServer) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await ws_whoami(running_server, None)
    assert refused.value.response.status_code == 401


def test_unknown_path_without_certificate_is_refused_not_found(running_server: RunningServer) -> None:
    with httpx2.Client(verify=tls_context(running_server, None), timeout=10) as http:
        response = http.get(f"{running_server.device_url}/api/v1/anything")
    assert response.status_code == 401


@pytest.mark.parametrize("kind", ["other_ca", "expired"])
def test_bad_certificate_fails_the_handshake(
    running_server: RunningServer, tmp_path: Path, kind: str
) -> None:
    factory = running_server.certificates(tmp_path)
    client = factory.issue("dev-x", other_ca=True) if kind == "other_ca" else factory.expired("dev-x")
    with pytest.raises((httpx2.TransportError, ssl.SSLError)):
        get_whoami(running_server, client)


@pytest.mark.parametrize("kind", ["other_ca", "expired"])
async def test_bad_certificate_fails_the_handshake_over_wss(
    running_server: RunningServer, tmp_path: Path, kind: str
) -> None:
    factory = running_server.certificates(tmp_path)
    client = factory.issue("dev-y", other_ca=True) if kind == "other_ca" else factory.expired("dev-y")
    with pytest.raises((ssl.SSLError, OSError, websockets.exceptions.WebSocketException)):
        await ws_whoami(running_server, client)


def test_device_listener_certificate_names_the_server(running_server: RunningServer) -> None:
    # The client verified the listener against the fleet CA with hostname checking on (see tls_context).
    context = tls_context(running_server, None)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED

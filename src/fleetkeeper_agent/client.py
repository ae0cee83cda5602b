"""HTTPS to the device listener: TLS contexts that trust only the fleet CA, and answers turned into
JSON objects or `ServerError`s carrying the problem's `code`."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx2

from fleetkeeper_agent import __version__
from fleetkeeper_agent.errors import AgentError, ServerError
from fleetkeeper_agent.keystore import KeyStore

TIMEOUT_SECONDS = 30.0


def tls_context(ca_pem: bytes, store: KeyStore | None = None) -> ssl.SSLContext:
    """Trust the fleet CA alone (not the system's CAs) and check the server's name; with a store, also
    present the device certificate (mTLS)."""
    # With cadata given, create_default_context loads nothing else; without it, it would load the
    # system's CA bundle, and any public CA could then vouch for the server's name.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=_pem_text(ca_pem))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # create_default_context already sets these; stated so that a later edit cannot quietly lose them.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if store is not None:
        store.load_client_identity(context)
    return context


def _pem_text(ca_pem: bytes) -> str:
    try:
        text = ca_pem.decode("ascii")
    except UnicodeDecodeError:
        raise AgentError("invalid_ca", "the CA file is not PEM") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise AgentError("invalid_ca", "the CA file holds no PEM certificate")
    return text


def check_server_url(url: str) -> str:
    """The device listener is always TLS; a plain http URL is a mistake, not a choice."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - it raises for a port out of range
    except ValueError:
        raise AgentError("invalid_server_url", f"{url!r}: the port is not valid") from None
    if parts.scheme != "https" or not parts.hostname:
        raise AgentError("invalid_server_url", f"{url!r}: expected https://host[:port]")
    return url.rstrip("/")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class DeviceClient:
    """One connection pool to the device listener. `transport` lets tests swap the network out."""

    def __init__(
        self,
        server_url: str,
        context: ssl.SSLContext,
        *,
        timeout: float = TIMEOUT_SECONDS,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.server_url = check_server_url(server_url)
        self._http = httpx2.Client(
            base_url=self.server_url,
            verify=context,
            timeout=timeout,
            transport=transport,
            # A device must talk to its server directly; a proxy from the environment would be a
            # surprise, and the TLS check would refuse most of them anyway.
            trust_env=False,
            headers={"User-Agent": f"fleetkeeper-agent/{__version__}", "Accept": "application/json"},
        )

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, body: Any = None) -> Answer:
        """Send `body` as JSON (nothing when None) and return a 2xx answer; anything else raises."""
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx2.TimeoutException:
            raise AgentError("network_error", f"{self.server_url}: no answer in time") from None
        except httpx2.HTTPError as exc:
            raise AgentError("network_error", f"cannot talk to {self.server_url}: {_reason(exc)}") from None
        if not 200 <= response.status_code < 300:
            raise _problem(response)
        if not response.content:
            return Answer(response.status_code, {})
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise AgentError(
                "invalid_response", f"{method} {path}: HTTP {response.status_code} without a JSON object"
            )
        return Answer(response.status_code, parsed)


def _reason(exc: Exception) -> str:
    # A TLS failure is two levels down (httpx2 → httpcore → ssl); its own message is the useful one.
    cause: BaseException | None = exc
    for _ in range(10):  # a chain can loop back on itself; a few links are all there is in practice
        cause = cause.__cause__ or cause.__context__ if cause is not None else None
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return str(cause)
    return str(exc) or type(exc).__name__


def _problem(response: httpx2.Response) -> ServerError:
    request_id = response.headers.get("x-request-id")
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("code"), str):
        detail = problem.get("detail") or problem.get("title") or response.reason_phrase
        return ServerError(
            problem["code"],
            str(detail),
            status=response.status_code,
            request_id=problem.get("request_id") or request_id,
        )
    # Not our server's problem document (a proxy's error page, say): name the status instead.
    return ServerError(
        f"http_{response.status_code}",
        response.reason_phrase or "unexpected answer",
        status=response.status_code,
        request_id=request_id,
    )

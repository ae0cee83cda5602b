"""The release engineer's calls to the server's management API (docs/software-trust.md)."""

from __future__ import annotations

from typing import Any

import httpx2

from fleetkeeper.releases.errors import ReleaseError

TIMEOUT = 30.0


def _request(method: str, server: str, path: str, token: str, body: Any = None) -> Any:
    url = server.rstrip("/") + path
    try:
        response = httpx2.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
        )
    except httpx2.HTTPError as exc:
        raise ReleaseError("server_unreachable", f"{method} {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            problem = response.json()
            code, detail = problem.get("code", "http_error"), problem.get("detail", response.text)
        except ValueError:
            code, detail = "http_error", response.text
        raise ReleaseError(str(code), f"{method} {url}: {response.status_code} {detail}")
    try:
        return response.json()
    except ValueError as exc:
        raise ReleaseError("bad_response", f"{method} {url}: not JSON") from exc


def fetch_online_keys(server: str, token: str) -> Any:
    return _request("GET", server, "/api/v1/repository/online-keys", token)


def fetch_metadata(server: str, token: str, file_name: str) -> Any:
    """`targets.json`, `root.json` (the newest) or `{N}.root.json` of the image repository."""
    return _request("GET", server, f"/api/v1/repository/metadata/{file_name}", token)


def fetch_director_root(server: str, token: str) -> Any:
    # Assumed route for the director's newest root on the management listener (the contract
    # names the device route only); kept here so one line changes if the server differs.
    return _request("GET", server, "/api/v1/director/metadata/root.json", token)


def post_trust(server: str, token: str, trust: dict[str, Any]) -> Any:
    return _request("POST", server, "/api/v1/repository/trust", token, trust)


def post_root(server: str, token: str, body: dict[str, Any]) -> Any:
    """`{"root": …}`, and `"director_root": …` when the director root rotates too."""
    return _request("POST", server, "/api/v1/repository/root", token, body)

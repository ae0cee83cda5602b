"""The console's session cookie and CSRF rules, over plain HTTP (no browser needed)."""

from __future__ import annotations

import httpx2

from tests.conftest import RunningServer
from tests.console.conftest import Admin, ApiClient
from tests.helpers.console import csrf_token


def _signed_in(
    server: RunningServer, admin: Admin, next_path: str = "/"
) -> tuple[httpx2.Client, httpx2.Response]:
    http = httpx2.Client(base_url=server.management_url, timeout=30)
    form = http.get("/sign-in")
    answer = http.post(
        "/sign-in",
        data={
            "username": admin.username,
            "password": admin.password,
            "csrf_token": csrf_token(form.text),
            "next": next_path,
        },
    )
    assert answer.status_code == 303, answer.text
    return http, answer


def test_signing_out_ends_the_cookie(console_server: RunningServer, admin: Admin) -> None:
    http, _ = _signed_in(console_server, admin)
    stolen = http.cookies["fleetkeeper_console"]
    dashboard = http.get("/")
    assert dashboard.status_code == 200
    assert http.post("/sign-out").status_code == 403  # no CSRF token
    assert http.post("/sign-out", data={"csrf_token": csrf_token(dashboard.text)}).status_code == 303
    replayed = httpx2.get(
        console_server.management_url + "/", cookies={"fleetkeeper_console": stolen}, follow_redirects=False
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/sign-in")


def test_a_change_from_another_origin_is_refused(console_server: RunningServer, admin: Admin) -> None:
    http, _ = _signed_in(console_server, admin)
    token = csrf_token(http.get("/").text)
    refused = http.post("/sign-out", data={"csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert "another site" in refused.text


def test_sign_in_never_redirects_off_site(console_server: RunningServer, admin: Admin) -> None:
    for target in (
        "//evil.example/x",
        "https://evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "/\n/evil",
    ):
        _, answer = _signed_in(console_server, admin, next_path=target)
        assert answer.headers["location"] == "/", target


def test_api_and_console_credentials_do_not_mix(console_server: RunningServer, admin: Admin) -> None:
    http, _ = _signed_in(console_server, admin)
    cookie = http.cookies["fleetkeeper_console"]
    as_bearer = httpx2.get(
        console_server.management_url + "/api/v1/me", headers={"Authorization": f"Bearer {cookie}"}
    )
    assert as_bearer.status_code == 401
    access = httpx2.post(
        console_server.management_url + "/api/v1/auth/sign-in",
        json={"username": admin.username, "password": admin.password},
    ).json()["access_token"]
    as_cookie = httpx2.get(
        console_server.management_url + "/",
        cookies={"fleetkeeper_console": access},
        follow_redirects=False,
    )
    assert as_cookie.status_code == 303


def test_the_cookie_is_renewed_after_a_signing_key_rotation(
    console_server: RunningServer, admin: Admin, admin_api: ApiClient
) -> None:
    http, _ = _signed_in(console_server, admin)
    first = http.cookies["fleetkeeper_console"]
    assert "fleetkeeper_console=" not in http.get("/").headers.get("set-cookie", "")
    admin_api.call("POST", "/api/v1/auth/signing-keys/rotate")
    renewed = http.get("/")
    assert renewed.status_code == 200
    assert "fleetkeeper_console=" in renewed.headers["set-cookie"]
    assert http.cookies["fleetkeeper_console"] != first
    assert http.get("/").status_code == 200
    assert renewed.headers["cache-control"] == "no-store"


def test_a_new_two_factor_rule_applies_to_open_sessions(
    console_server: RunningServer, admin_api: ApiClient
) -> None:
    created = admin_api.call(
        "POST", "/api/v1/users", json={"username": "viewer-2fa", "roles": [{"role": "read-only"}]}
    )
    assert isinstance(created, dict)
    one_time, password = created["one_time_password"], "amber-violin-harbor-31"
    first = ApiClient(console_server, "viewer-2fa", one_time)
    first.call("POST", "/api/v1/me/password", json={"current_password": one_time, "new_password": password})
    http, _ = _signed_in(console_server, Admin("viewer-2fa", password, ""))
    assert http.get("/").status_code == 200
    admin_api.call("PUT", "/api/v1/access/policy", json={"require_2fa_roles": ["read-only"]})
    try:
        required = http.get("/", follow_redirects=False)
        assert required.status_code == 303
        assert required.headers["location"] == "/account/setup"
    finally:
        admin_api.call("PUT", "/api/v1/access/policy", json={"require_2fa_roles": []})

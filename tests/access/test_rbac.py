"""Role-based access: every route declares who may call it, and every built-in role gets exactly
what the table below says — on every route, with and without a device-group scope."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

import httpx2
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import select
from starlette.routing import BaseRoute

from fleetkeeper.access.auth import requires
from fleetkeeper.access.models import User
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.signin import Client, SignIn
from fleetkeeper.console.app import ConsoleMount
from fleetkeeper.core.routeaccess import AccessRule, declared_rules
from fleetkeeper.devices.api import PUBLIC_PATHS as DEVICE_PUBLIC_PATHS
from fleetkeeper.server.app import (
    FRAMEWORK_PUBLIC_PATHS,
    app_routes,
    console_routes,
    create_device_app,
    create_management_app,
)
from fleetkeeper.server.runtime import Runtime
from tests.conftest import Api, bearer
from tests.helpers.roles import EXPECTED

P = Permission


# Routes that end the caller's session: the matrix signs in again after them.
SESSION_ENDING = {("POST", "/api/v1/auth/sign-out"), ("DELETE", "/api/v1/me/sessions")}


def all_routes(runtime: Runtime) -> list[tuple[str, BaseRoute]]:
    management = create_management_app(runtime)
    return (
        [("management", route) for route in app_routes(management)]
        + [("management", route) for route in console_routes(management)]
        + [("device", route) for route in app_routes(create_device_app(runtime))]
    )


def test_every_route_declares_its_access(runtime: Runtime) -> None:
    undeclared = []
    for listener, route in all_routes(runtime):
        path = getattr(route, "path", "?")
        if listener == "management" and path in FRAMEWORK_PUBLIC_PATHS:
            continue
        if not declared_rules(route):
            undeclared.append(f"{listener} {path}")
    assert not undeclared, f"routes that declare no access rule: {undeclared}"


def test_device_routes_need_a_certificate_and_management_routes_never_do(runtime: Runtime) -> None:
    for listener, route in all_routes(runtime):
        kinds = {rule.kind for rule in declared_rules(route)}
        path = getattr(route, "path", "?")
        if listener == "device":
            assert kinds == ({"public"} if path in DEVICE_PUBLIC_PATHS else {"device"}), path
        else:
            assert "device" not in kinds


def _endpoints(app: FastAPI) -> list[tuple[str, str, AccessRule]]:
    found = []
    for route in app_routes(app):
        rules = declared_rules(route)
        methods = getattr(route, "methods", None) or set()
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            for rule in rules:
                found.append((method, re.sub(r"\{[^}]+\}", "x", route.path), rule))  # type: ignore[attr-defined]
    return found


async def _headers_for(api: Api, role: str, device_groups: list[str] | None) -> dict[str, str]:
    """A fresh session for a user holding one built-in role (sign-in without the argon2 cost)."""
    username = f"matrix-{role}-{'scoped' if device_groups else 'all'}"
    async with api.runtime.database.session() as session:
        user = await session.scalar(select(User).where(User.username == username))
    if user is None:
        await api.create_user(
            username, "tulip-orbit-canyon-7", roles=[{"role": role, "device_groups": device_groups}]
        )
        async with api.runtime.database.session() as session:
            user = await session.scalar(select(User).where(User.username == username))
    assert user is not None
    flow = SignIn(api.runtime.database, api.runtime.keyring, api.runtime.rate_limiter, api.runtime.settings)
    pair = await flow.start_session(user, "password", Client("198.51.100.1"))
    return bearer(pair.access_token)


@pytest.fixture
async def matrix_api(api: Api) -> AsyncIterator[Api]:
    """The management app plus one probe route that checks devices:read against a group, standing
    in for the device routes until they exist: the same dependency and `ensure` they use."""
    app = create_management_app(api.runtime)
    probe = APIRouter()
    app.state.routers.append(probe)

    @probe.get("/probe/groups/{group}")
    async def in_group(
        group: str, principal: Annotated[Principal, requires(P.DEVICES_READ)]
    ) -> dict[str, str]:
        principal.ensure(P.DEVICES_READ, [group], on=f"group {group}")
        return {"group": group}

    app.include_router(probe)
    # The console is mounted at `/` and takes every path no route before it took: the probe goes first.
    app.router.routes.sort(key=lambda route: isinstance(route, ConsoleMount))
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(client, api.runtime, api.admin_one_time_password)


@pytest.mark.parametrize("scoped", [False, True], ids=["unscoped", "scoped-to-plant-3"])
async def test_matrix_every_route_every_builtin_role(matrix_api: Api, scoped: bool) -> None:
    api = matrix_api
    await api.admin_headers()
    endpoints = [e for e in _endpoints(create_management_app(api.runtime)) if e[2].kind != "public"]
    assert len(endpoints) > 25
    unauthenticated = [
        f"{method} {path}"
        for method, path, _ in endpoints
        if (await api.client.request(method, path, json={})).status_code != 401
    ]
    assert not unauthenticated, f"reachable without credentials: {unauthenticated}"
    mismatches = []
    for role, held in EXPECTED.items():
        headers = await _headers_for(api, role, ["plant-3"] if scoped else None)
        for method, path, rule in endpoints:
            response = await api.client.request(method, path, headers=headers, json={})
            allowed = rule.kind == "authenticated" or set(rule.permissions) <= held
            if allowed == (response.status_code == 403) or response.status_code in (401, 500):
                mismatches.append(f"{role} {method} {path}: {response.status_code} {response.text[:120]}")
            if (method, path) in SESSION_ENDING:
                headers = await _headers_for(api, role, ["plant-3"] if scoped else None)
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize(
    ("role", "device_groups", "group", "allowed"),
    [
        ("read-only", None, "plant-3", True),
        ("read-only", ["plant-3"], "plant-3", True),
        ("read-only", ["plant-3"], "plant-4", False),
        ("troubleshooter", ["plant-3", "plant-5"], "plant-5", True),
        ("troubleshooter", ["plant-3"], "plant-4", False),
        ("admin", ["plant-3"], "plant-4", False),
        ("admin", None, "plant-4", True),
    ],
)
async def test_group_scope_inside_and_outside(
    matrix_api: Api, role: str, device_groups: list[str] | None, group: str, allowed: bool
) -> None:
    await matrix_api.admin_headers()
    headers = await _headers_for(matrix_api, role, device_groups)
    response = await matrix_api.client.get(f"/probe/groups/{group}", headers=headers)
    assert response.status_code == (200 if allowed else 403), response.text
    if not allowed:
        assert response.json()["permission"] == "devices:read"


async def test_custom_role_behaves_as_its_grants_say(api: Api) -> None:
    admin = await api.admin_headers()
    created = await api.client.post(
        "/api/v1/roles",
        json={
            "name": "auditor",
            "description": "reads the audit log and users",
            "grants": [{"permission": "audit:read"}, {"permission": "devices:read", "scopes": ["plant-3"]}],
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    auditor = await api.create_user("aud", "tulip-orbit-canyon-7", roles=[{"role": "auditor"}])
    me = (await api.client.get("/api/v1/me", headers=auditor)).json()
    assert me["permissions"] == [
        {"permission": "audit:read", "scopes": None},
        {"permission": "devices:read", "scopes": ["plant-3"]},
    ]
    assert (await api.client.get("/api/v1/users", headers=auditor)).status_code == 403
    # Narrow it further: the change applies to the next request.
    changed = await api.client.put(
        "/api/v1/roles/auditor",
        json={"grants": [{"permission": "devices:read", "scopes": ["plant-3"]}]},
        headers=admin,
    )
    assert changed.status_code == 200
    me = (await api.client.get("/api/v1/me", headers=auditor)).json()
    assert me["permissions"] == [{"permission": "devices:read", "scopes": ["plant-3"]}]


async def test_role_rules(api: Api) -> None:
    admin = await api.admin_headers()
    builtin = await api.client.put("/api/v1/roles/admin", json={"description": "x"}, headers=admin)
    assert builtin.json()["code"] == "builtin_role"
    assert (await api.client.delete("/api/v1/roles/read-only", headers=admin)).json()[
        "code"
    ] == "builtin_role"
    unscopable = await api.client.post(
        "/api/v1/roles",
        json={"name": "x", "grants": [{"permission": "users:manage", "scopes": ["a"]}]},
        headers=admin,
    )
    assert unscopable.json()["code"] == "invalid_scope"
    bad_name = await api.client.post("/api/v1/roles", json={"name": "Bad Name", "grants": []}, headers=admin)
    assert bad_name.json()["code"] == "invalid_role_name"
    await api.client.post(
        "/api/v1/roles", json={"name": "viewer", "grants": [{"permission": "devices:read"}]}, headers=admin
    )
    await api.create_user("viewer1", "tulip-orbit-canyon-7", roles=[{"role": "viewer"}])
    assert (await api.client.delete("/api/v1/roles/viewer", headers=admin)).json()["code"] == "role_in_use"
    unknown = await api.client.post(
        "/api/v1/users", json={"username": "z", "roles": [{"role": "nope"}]}, headers=admin
    )
    assert unknown.json()["code"] == "unknown_role"


async def test_nobody_grants_more_than_they_hold(api: Api) -> None:
    await api.admin_headers()
    await api.client.post(
        "/api/v1/roles",
        json={"name": "people-admin", "grants": [{"permission": "users:manage"}]},
        headers=await api.admin_headers(),
    )
    people = await api.create_user("people", "tulip-orbit-canyon-7", roles=[{"role": "people-admin"}])
    escalate = await api.client.post(
        "/api/v1/users", json={"username": "mine", "roles": [{"role": "admin"}]}, headers=people
    )
    assert escalate.status_code == 403
    assert escalate.json()["code"] == "cannot_grant_beyond_own"
    ok = await api.client.post(
        "/api/v1/users", json={"username": "mine", "roles": [{"role": "people-admin"}]}, headers=people
    )
    assert ok.status_code == 201

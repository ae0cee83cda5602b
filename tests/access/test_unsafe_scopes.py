"""A device group whose filter reads what devices report about themselves reaches no device as a
scope (devices/scopes.py). Naming one as a scope is refused where it is given — a user's role
assignment, a role's grants, an API token's grants — and such a group is not created under a name
that grants already give as a scope. Through the API, on both databases; the check itself is
registered into access by the devices domain."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx2

from tests.conftest import Api
from tests.helpers.groups import group
from tests.helpers.users import PASSWORD

UNSAFE = 'attributes.ring == "canary"'
SAFE = 'tag.ring == "canary"'


def assert_unsafe(refused: httpx2.Response, name: str = "reported", field: str = "attributes.ring") -> None:
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["code"] == "unsafe_scope_group"
    assert name in problem["detail"]
    assert field in problem["detail"], "the fields that make it unsafe"
    assert "static group" in problem["detail"], "what to do instead"
    assert "tags" in problem["detail"]
    assert problem["groups"] == [{"name": name, "device_reported_fields": [field]}]


def read_only(*groups: str) -> list[dict[str, Any]]:
    return [{"role": "read-only", "device_groups": list(groups)}]


async def usernames(api: Api, admin: dict[str, str]) -> list[str]:
    listed = await api.client.get("/api/v1/users", headers=admin)
    return [user["username"] for user in listed.json()["items"]]


async def test_a_role_assignment_naming_an_unsafe_group_is_refused(api: Api) -> None:
    await group(api, "reported", UNSAFE)
    await group(api, "plant-3")
    admin = await api.admin_headers()

    created = await api.client.post(
        "/api/v1/users",
        json={"username": "r", "password": PASSWORD, "roles": read_only("plant-3", "reported")},
        headers=admin,
    )
    assert_unsafe(created)
    assert "r" not in await usernames(api, admin)

    made = await api.client.post(
        "/api/v1/users",
        json={"username": "r", "password": PASSWORD, "roles": read_only("plant-3")},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    user_id = made.json()["user"]["id"]
    replaced = await api.client.put(
        f"/api/v1/users/{user_id}/roles", json=read_only("reported"), headers=admin
    )
    assert_unsafe(replaced)
    kept = (await api.client.get(f"/api/v1/users/{user_id}", headers=admin)).json()
    assert kept["roles"] == ["read-only"]


async def test_role_and_token_grants_naming_an_unsafe_group_are_refused(api: Api) -> None:
    await group(api, "reported", UNSAFE)
    admin = await api.admin_headers()
    grants = [{"permission": "devices:read", "scopes": ["reported"]}]

    assert_unsafe(
        await api.client.post("/api/v1/roles", json={"name": "watchers", "grants": grants}, headers=admin)
    )
    safe = [{"permission": "devices:read", "scopes": ["plant-3"]}]
    assert (
        await api.client.post("/api/v1/roles", json={"name": "watchers", "grants": safe}, headers=admin)
    ).status_code == 201
    assert_unsafe(await api.client.put("/api/v1/roles/watchers", json={"grants": grants}, headers=admin))
    role = (await api.client.get("/api/v1/roles/watchers", headers=admin)).json()
    assert role["grants"] == [{"permission": "devices:read", "scopes": ["plant-3"]}]

    token = await api.client.post("/api/v1/me/tokens", json={"name": "ci", "grants": grants}, headers=admin)
    assert_unsafe(token)
    assert (await api.client.get("/api/v1/me/tokens", headers=admin)).json() == []


async def test_safe_groups_unknown_names_and_release_tags_are_accepted(api: Api) -> None:
    await group(api, "reported", UNSAFE)
    await group(api, "tagged", SAFE)
    await group(api, "plant-3")
    admin = await api.admin_headers()
    roles = [
        {"role": "read-only", "device_groups": ["tagged", "plant-3", "not-yet-made"]},
        {"role": "release-manager", "release_tags": ["reported"]},
    ]
    created = await api.client.post(
        "/api/v1/users", json={"username": "ok", "password": PASSWORD, "roles": roles}, headers=admin
    )
    assert created.status_code == 201, created.text
    token = await api.client.post(
        "/api/v1/me/tokens",
        json={"name": "ci", "grants": [{"permission": "releases:read", "scopes": ["reported"]}]},
        headers=admin,
    )
    assert token.status_code == 201, "a release tag that shares a group's name is no device group"


async def test_an_unsafe_group_is_not_created_under_a_name_given_as_a_scope(api: Api) -> None:
    """A group deleted and created again: grants that named the old one would name the new one."""
    admin = await api.admin_headers()
    await group(api, "canary")
    await api.create_user("t", PASSWORD, roles=read_only("canary"))
    await api.client.post(
        "/api/v1/roles",
        json={"name": "role-scoped", "grants": [{"permission": "devices:read", "scopes": ["in-a-role"]}]},
        headers=admin,
    )
    await api.client.post(
        "/api/v1/me/tokens",
        json={"name": "ci", "grants": [{"permission": "devices:read", "scopes": ["in-a-token"]}]},
        headers=admin,
    )
    assert (await api.client.delete("/api/v1/device-groups/canary", headers=admin)).status_code == 204

    for name in ("canary", "in-a-role", "in-a-token"):
        refused = await api.client.post(
            "/api/v1/device-groups", json={"name": name, "filter": UNSAFE}, headers=admin
        )
        assert_unsafe(refused, name)
        assert "given as a scope" in refused.json()["detail"]
    names = [item["name"] for item in (await api.client.get("/api/v1/device-groups", headers=admin)).json()]
    assert names == []

    assert (await group(api, "canary", SAFE))["usable_as_scope"], "a filter on tags is fine"
    assert not (await group(api, "nobodys", UNSAFE))["usable_as_scope"], "a target and a search still"


def test_the_management_app_has_the_device_group_check_registered() -> None:
    """access imports nothing of devices: the check is registered when the composition root wires
    the domains, which the management app's routers do. Asked in a fresh interpreter."""
    program = (
        "from fleetkeeper.server.app import management_routers\n"
        "from fleetkeeper.access import scopes\n"
        "management_routers()\n"
        "print(sorted(check.__module__ for check in scopes.scope_checks('device_group')))\n"
    )
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['fleetkeeper.devices.scope_fitness']"

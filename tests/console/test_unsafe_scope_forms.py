"""The console's forms that give scopes (a user's roles, a role's grants, a new API token) show
the refusal of a device group that cannot scope a permission, on the form itself, with what was
typed. In process, over plain HTTP with the session cookie, on both databases."""

from __future__ import annotations

import html

import httpx2

from tests.conftest import Api
from tests.helpers.console import console_as, csrf_of
from tests.helpers.groups import group
from tests.helpers.users import PASSWORD

UNSAFE = 'attributes.ring == "canary"'


def assert_refusal_shown(page: httpx2.Response, form_action: str) -> None:
    assert page.status_code == 422, page.text[:500]
    text = html.unescape(page.text)
    assert "the device group reported" in text
    assert "attributes.ring" in text
    assert "use a static group" in text
    assert f'action="{form_action}"' in page.text, "shown with the form, to be corrected"


async def test_the_role_forms_show_an_unsafe_scope_refused(api: Api) -> None:
    await group(api, "reported", UNSAFE)
    await api.create_user("admin-2", PASSWORD, roles=[{"role": "admin"}])
    target = await api.client.post(
        "/api/v1/users",
        json={"username": "reader", "password": PASSWORD, "roles": [{"role": "read-only"}]},
        headers=await api.admin_headers(),
    )
    user_id = target.json()["user"]["id"]

    async with console_as(api, "admin-2") as console:
        detail = await console.get(f"/users/{user_id}")
        refused = await console.post(
            f"/users/{user_id}/roles",
            data={"role": "read-only", "device_groups:read-only": "reported", "csrf_token": csrf_of(detail)},
        )
        assert_refusal_shown(refused, f"/users/{user_id}/roles")
        assert 'name="device_groups:read-only" aria-label="Device groups for read-only" value="reported"' in (
            refused.text
        ), "what was typed is still there"

        roles = await console.get("/roles")
        grant = {"grant": "devices:read", "scopes:devices:read": "reported"}
        created = await console.post(
            "/roles", data={"name": "watchers", **grant, "csrf_token": csrf_of(roles)}
        )
        assert_refusal_shown(created, "/roles")
        assert 'value="watchers"' in created.text

        made = await console.post(
            "/roles", data={"name": "watchers", "grant": "devices:read", "csrf_token": csrf_of(roles)}
        )
        assert made.status_code == 303, made.text[:500]
        role = await console.get("/roles/watchers")
        changed = await console.post("/roles/watchers", data={**grant, "csrf_token": csrf_of(role)})
        assert_refusal_shown(changed, "/roles/watchers")

        account = await console.get("/account")
        token = await console.post(
            "/account/tokens",
            data={"name": "ci", "narrow": "yes", **grant, "csrf_token": csrf_of(account)},
        )
        assert_refusal_shown(token, "/account/tokens")

    admin = await api.admin_headers()
    assert (await api.client.get(f"/api/v1/users/{user_id}", headers=admin)).json()["roles"] == ["read-only"]
    watchers = (await api.client.get("/api/v1/roles/watchers", headers=admin)).json()
    assert watchers["grants"] == [{"permission": "devices:read", "scopes": None}], "unchanged"

"""The enrollment page shows an operator scoped to device groups only the groups they see, as
GET /api/v1/device-groups does: in its group choices, and as the group of a token. In process,
over plain HTTP with the session cookie (no browser needed), on both databases."""

from __future__ import annotations

import re

from tests.conftest import Api
from tests.helpers.console import console_as
from tests.helpers.users import PASSWORD

OTHERS = ("plant-4", "canary", "ring-canary")


async def fleet_with_groups(api: Api) -> None:
    admin = await api.admin_headers()
    for body in (
        {"name": "plant-3"},
        {"name": "plant-4"},
        {"name": "canary", "filter": 'tag.ring == "ring-canary"'},
    ):
        created = await api.client.post("/api/v1/device-groups", json=body, headers=admin)
        assert created.status_code == 201, created.text
    for name, group in (("token-3", "plant-3"), ("token-4", "plant-4")):
        made = await api.client.post(
            "/api/v1/enrollment-tokens", json={"name": name, "group": group}, headers=admin
        )
        assert made.status_code == 201, made.text
    for name, permission in (("enroller", "devices:manage"), ("viewer", "devices:read")):
        role = await api.client.post(
            "/api/v1/roles", json={"name": name, "grants": [{"permission": permission}]}, headers=admin
        )
        assert role.status_code == 201, role.text


def assert_shows_only_plant_3(text: str) -> None:
    assert 'value="plant-3"' in text
    for name in OTHERS:
        assert name not in text, f"{name} is outside the operator's devices:read"


async def test_the_enrollment_page_offers_only_the_groups_the_operator_sees(api: Api) -> None:
    await fleet_with_groups(api)
    await api.create_user(
        "operator-3",
        PASSWORD,
        roles=[
            {"role": "enroller", "device_groups": ["plant-3"]},
            {"role": "viewer", "device_groups": ["plant-3"]},
        ],
    )
    async with console_as(api, "operator-3") as console:
        page = await console.get("/enrollment")
        assert page.status_code == 200
        assert_shows_only_plant_3(page.text)
        assert "token-3" in page.text
        assert "token-4" not in page.text, "tokens into other groups are not listed (as before)"

        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf
        created = await console.post(
            "/enrollment/tokens", data={"name": "token-3b", "group": "plant-3", "csrf_token": csrf.group(1)}
        )
        assert created.status_code == 200, created.text
        assert "token-3b" in created.text
        assert_shows_only_plant_3(created.text)


async def test_a_token_into_a_group_the_operator_manages_but_does_not_see_names_no_group(api: Api) -> None:
    await fleet_with_groups(api)
    await api.create_user(
        "operator-34",
        PASSWORD,
        roles=[
            {"role": "enroller", "device_groups": ["plant-3", "plant-4"]},
            {"role": "viewer", "device_groups": ["plant-3"]},
        ],
    )
    async with console_as(api, "operator-34") as console:
        page = await console.get("/enrollment")
        assert page.status_code == 200
        assert "token-4" in page.text, "theirs to revoke"
        assert_shows_only_plant_3(page.text)
        assert "a group you do not see" in page.text


async def test_an_unscoped_operator_is_offered_every_static_group(api: Api) -> None:
    await fleet_with_groups(api)
    await api.create_user("operator-all", PASSWORD, roles=[{"role": "enroller"}, {"role": "viewer"}])
    async with console_as(api, "operator-all") as console:
        page = await console.get("/enrollment")
        assert 'value="plant-3"' in page.text
        assert 'value="plant-4"' in page.text
        assert 'value="canary"' not in page.text, "a dynamic group's members follow its filter"
        assert "token-4" in page.text

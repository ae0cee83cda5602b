"""Users as the tests create them: one password for all, roles given or scoped to groups."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from fleetkeeper.access.models import RoleAssignment
from tests.conftest import Api

PASSWORD = "tulip-orbit-canyon-7"


async def user_scoped_to_unfit_groups(api: Api, name: str, role: str, groups: list[str]) -> dict[str, str]:
    """A user whose role is scoped to groups unfit for a scope, as assignments given before such
    scopes were refused still are (tests/access/test_unsafe_scopes.py): written to the database."""
    headers = await api.create_user(
        name, "tulip-orbit-canyon-7", roles=[{"role": role, "device_groups": ["placeholder"]}]
    )
    user_id = (await api.client.get("/api/v1/me", headers=headers)).json()["user"]["id"]
    async with api.runtime.database.transaction() as session:
        await session.execute(
            update(RoleAssignment).where(RoleAssignment.user_id == user_id).values(device_groups=groups)
        )
    return headers


async def user(api: Api, name: str, *roles: dict[str, Any]) -> dict[str, str]:
    return await api.create_user(name, PASSWORD, roles=list(roles))

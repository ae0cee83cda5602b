"""The console's actions on an account answer as the API does: a user manager cannot end the
sessions of a stronger account. In process, over plain HTTP with the session cookie, on both
databases."""

from __future__ import annotations

from sqlalchemy import select

from fleetkeeper.access.models import SignInSession
from tests.conftest import Api
from tests.helpers.console import console_as, csrf_of
from tests.helpers.users import PASSWORD


async def test_a_user_manager_cannot_end_a_stronger_accounts_sessions(api: Api) -> None:
    admin = await api.admin_headers()
    admin_id = (await api.client.get("/api/v1/me", headers=admin)).json()["user"]["id"]
    managers = await api.client.post(
        "/api/v1/roles",
        json={"name": "user-managers", "grants": [{"permission": "users:manage"}]},
        headers=admin,
    )
    assert managers.status_code == 201
    await api.create_user("hd", PASSWORD, roles=[{"role": "user-managers"}])

    async with console_as(api, "hd") as console:
        page = await console.get(f"/users/{admin_id}")
        assert page.status_code == 200
        ended = await console.post(f"/users/{admin_id}/sessions/end", data={"csrf_token": csrf_of(page)})
        assert ended.status_code == 403, ended.text[:500]
        assert "holds permissions you do not hold" in ended.text

    async with api.runtime.database.session() as session:
        alive = await session.scalars(
            select(SignInSession).where(SignInSession.user_id == admin_id, SignInSession.revoked_at.is_(None))
        )
        assert alive.all(), "the administrator's sessions go on"
    assert (await api.client.get("/api/v1/me", headers=admin)).status_code == 200

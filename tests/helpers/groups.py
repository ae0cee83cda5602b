"""Device groups and tags through the management API, as the administrator."""

from __future__ import annotations

from typing import Any

import httpx2

from tests.conftest import Api


async def group(api: Api, name: str, filter_expression: str | None = None) -> dict[str, Any]:
    created = await api.client.post(
        "/api/v1/device-groups",
        json={"name": name, **({"filter": filter_expression} if filter_expression else {})},
        headers=await api.admin_headers(),
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def member_of(api: Api, name: str, device_id: str | None) -> None:
    added = await api.client.post(
        f"/api/v1/device-groups/{name}/devices",
        json={"devices": [device_id]},
        headers=await api.admin_headers(),
    )
    assert added.status_code == 204, added.text


async def set_tags(api: Api, headers: dict[str, str], device_id: str | None, **tags: str) -> httpx2.Response:
    return await api.client.put(f"/api/v1/devices/{device_id}/tags", json={"tags": tags}, headers=headers)

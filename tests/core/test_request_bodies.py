"""Request bodies and parameters are taken as the schema types them: no field the schema does not
name, no `true` for a number or `"5"` for an integer, no time without a zone."""

from __future__ import annotations

import typing

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from fleetkeeper.core.wire import RequestBody
from fleetkeeper.server.app import app_routes, create_device_app, create_management_app
from fleetkeeper.server.runtime import Runtime
from tests.conftest import Api


def _models(annotation: object) -> typing.Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models(field.annotation)
        return
    for argument in typing.get_args(annotation):
        yield from _models(argument)


async def test_every_json_body_is_a_request_body(runtime: Runtime) -> None:
    bodies = {
        model
        for app in (create_management_app(runtime), create_device_app(runtime))
        for route in app_routes(app)
        if isinstance(route, APIRoute) and route.body_field is not None
        for model in _models(route.body_field.field_info.annotation)
    }
    assert len(bodies) > 20
    lax = sorted(model.__qualname__ for model in bodies if not issubclass(model, RequestBody))
    assert not lax, f"bodies that accept unknown fields or convert values: {lax} (derive from RequestBody)"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_in_hours", True),
        ("expires_in_hours", "24"),
        ("expires_in_hours", 24.5),
        ("auto_accept", 1),
        ("auto_accept", "yes"),
        ("max_uses", False),
        ("unknown_field", 1),
    ],
)
async def test_values_are_not_converted(api: Api, field: str, value: object) -> None:
    response = await api.client.post(
        "/api/v1/enrollment-tokens", json={"name": "line", field: value}, headers=await api.admin_headers()
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_failed"
    assert response.json()["errors"][0]["location"] == ["body", field]


async def test_a_grant_names_its_permission_by_value(api: Api) -> None:
    admin = await api.admin_headers()
    created = await api.client.post(
        "/api/v1/roles",
        json={"name": "viewer", "grants": [{"permission": "devices:read", "scopes": ["plant-3"]}]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    refused = await api.client.post(
        "/api/v1/roles", json={"name": "odd", "grants": [{"permission": 7}]}, headers=admin
    )
    assert refused.status_code == 422, refused.text


@pytest.mark.parametrize(
    ("path", "parameter"), [("/api/v1/terminal/sessions", "before"), ("/api/v1/audit/records", "since")]
)
@pytest.mark.parametrize(
    "time", ["2026-12-01T10:00:00", "1700000000", "0", "2026-12-01 10:00:00Z", "2026-12-01T10:00Z"]
)
async def test_a_time_is_rfc_3339_with_its_zone(api: Api, path: str, parameter: str, time: str) -> None:
    response = await api.client.get(path, params={parameter: time}, headers=await api.admin_headers())
    assert response.status_code == 422, response.text
    assert "RFC 3339" in response.text


async def test_a_time_with_its_zone_is_taken(api: Api) -> None:
    admin = await api.admin_headers()
    aware = await api.client.get(
        "/api/v1/terminal/sessions", params={"before": "2026-12-01T10:00:00Z"}, headers=admin
    )
    assert aware.status_code == 200, aware.text

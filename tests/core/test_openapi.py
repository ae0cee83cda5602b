"""The OpenAPI document describes what the API answers: problems as application/problem+json,
the statuses the shared layers give, and a 405 names every method a path takes."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api

PROBLEM = "application/problem+json"


async def _document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/api/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def test_every_error_answer_is_a_documented_problem(api: Api) -> None:
    document = await _document(api)
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) > 50
    for path, method, operation in operations:
        for status, response in operation["responses"].items():
            if status[0] in "45":
                assert list(response.get("content", {})) == [PROBLEM], (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


async def test_statuses_follow_from_the_route(api: Api) -> None:
    paths = (await _document(api))["paths"]
    create = paths["/api/v1/deployments"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "413", "422", "429"} <= set(create)
    assert "Retry-After" in create["429"]["headers"]
    health = paths["/healthz"]["get"]["responses"]
    assert set(health) == {"200"}, "a public route without input answers only its own statuses"
    sign_in = paths["/api/v1/auth/sign-in"]["post"]["responses"]
    assert {"401", "429"} <= set(sign_in), "public, but it refuses credentials and backs off"
    assert "application/x-pem-file" in paths["/api/v1/pki/ca.pem"]["get"]["responses"]["200"]["content"]


async def test_a_wrong_method_names_every_method_of_the_path(api: Api) -> None:
    # GET /api/v1/users/{id} and DELETE /api/v1/users/{id} are different routes of one path.
    response = await api.client.put("/api/v1/users/usr_x", headers=await api.admin_headers())
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allowed, allowed
    assert "PUT" not in allowed


async def test_operations_that_need_a_credential_name_the_bearer_scheme(api: Api) -> None:
    document = await _document(api)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/api/v1/devices"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/api/v1/auth/sign-in"]["post"]
    assert "security" not in paths["/healthz"]["get"]

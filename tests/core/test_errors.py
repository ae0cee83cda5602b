"""Problem details: every error is problem+json with a stable code, and never echoes secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from fleetkeeper.core.edge import RequestEdgeMiddleware
from fleetkeeper.core.errors import ConflictError, install_problem_handlers
from fleetkeeper.core.metrics import REQUESTS


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    password: str


def build_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(RequestEdgeMiddleware, listener="test")

    @app.post("/sign-in")
    async def sign_in(body: SignIn) -> dict[str, str]:
        return {"user": body.username}

    @app.post("/conflict")
    async def conflict() -> None:
        raise ConflictError("that name is taken", code="name_taken", name="x")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_validation_error_does_not_echo_the_input(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/sign-in", json={"username": "a", "password": 12345678901234, "extra": "hunter2"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_failed"
    assert {tuple(error["location"]) for error in body["errors"]} == {("body", "password"), ("body", "extra")}
    assert "12345678901234" not in response.text
    assert "hunter2" not in response.text


async def test_malformed_json_is_a_problem(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/sign-in", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"


async def test_domain_problem_keeps_its_code_and_extras(client: httpx2.AsyncClient) -> None:
    response = await client.post("/conflict")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "name_taken"
    assert body["detail"] == "that name is taken"
    assert body["name"] == "x"


async def test_unexpected_error_is_a_500_problem_without_internals(client: httpx2.AsyncClient) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error"
    assert "secret internals" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]


async def test_wrong_method_is_a_problem(client: httpx2.AsyncClient) -> None:
    response = await client.get("/sign-in")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_an_unexpected_error_is_counted_as_the_500_it_became(client: httpx2.AsyncClient) -> None:
    def served() -> float:
        return REQUESTS.labels("test", "GET", "/boom", "500")._value.get()

    before = served()
    assert (await client.get("/boom")).status_code == 500
    assert served() == before + 1

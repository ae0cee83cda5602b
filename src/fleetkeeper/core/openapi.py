"""The OpenAPI document says what every operation can answer: its own responses, and the
problem+json answers that the shared layers give (validation, sign-in, permissions, limits).

FastAPI documents a route's success and a 422 of its own shape; the problems raised by the
access rules, the body limit, the rate limiter and the domains' `ProblemError`s are added here,
from what each route declares (its parameters, its body, its access rule), so that a client
generated from the document handles every answer it can get. Operations that need a credential
name the bearer scheme, which gives the API docs page its Authorize button.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from fleetkeeper.core.errors import PROBLEM_CONTENT_TYPE
from fleetkeeper.core.queries import accepts_any_query
from fleetkeeper.core.routeaccess import declared_rules

PROBLEM = "Problem"
VALIDATION_PROBLEM = "ValidationProblem"

_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": PROBLEM,
    "description": "RFC 9457 problem details; `code` is stable, `detail` says what to do next.",
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string", "description": "urn:fleetkeeper:problem:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "additionalProperties": True,
}
_VALIDATION_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": VALIDATION_PROBLEM,
    "description": "A request that does not match the schema (`errors` says where; the offending "
    "input is never echoed), or a value the operation cannot take.",
    "allOf": [
        {"$ref": f"#/components/schemas/{PROBLEM}"},
        {
            "type": "object",
            "properties": {
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["location", "message"],
                        "properties": {
                            "location": {"type": "array", "items": {"type": "string"}},
                            "message": {"type": "string"},
                        },
                    },
                }
            },
        },
    ],
}

_DESCRIPTIONS = {
    400: "The request is malformed or a value is not acceptable (problem `code` says which)",
    401: "Not signed in, or the credential is invalid, expired or revoked",
    403: "Signed in, but this needs a permission (or a pending action) the caller does not have",
    404: "No such object, or none the caller may see",
    409: "The object's state does not allow this now",
    413: "The body is larger than this route accepts",
    422: "The request does not match the schema",
    429: "Too many requests: wait for `Retry-After` seconds",
}
BEARER = "bearer"
_BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An access token (`POST /api/v1/auth/sign-in`) or an API token (`fkpat.…`)",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
_READS = frozenset({"GET", "HEAD"})


def problem_statuses(route: APIRoute) -> set[int]:
    """The problem answers a route can give besides its own: from its inputs and access rule."""
    dependant = route.dependant
    params = dependant.path_params or dependant.query_params or dependant.header_params
    has_body = route.body_field is not None
    statuses: set[int] = set()
    # An operation refuses a query parameter it does not take (core/queries.py).
    if params or has_body or dependant.cookie_params or not accepts_any_query(route):
        statuses |= {400, 422}
    if dependant.path_params or has_body:
        statuses.add(404)
    if has_body:
        statuses.add(413)
    if not (route.methods or set()) <= _READS:
        statuses.add(409)
    if signed_in(route):
        statuses |= {401, 403, 429}
    return statuses


def signed_in(route: APIRoute) -> bool:
    """Whether the route needs a user's credential (its access rule is not public)."""
    return any(rule.kind != "public" for rule in declared_rules(route))


def _problem_response(status: int) -> dict[str, Any]:
    schema = VALIDATION_PROBLEM if status == 422 else PROBLEM
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if status == 429:
        response["headers"] = _RETRY_AFTER
    return response


def add_problem_responses(document: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    """Adds the problem answers to every operation of `routes` in `document`, in place. A 4xx or
    5xx status a route documents itself (`responses={401: {"description": …}}`) keeps its
    description; its content becomes problem+json (FastAPI's own 422 shape is not what the server
    sends either). An operation that needs a credential says so (`security`), so that a client —
    and the API docs' Authorize button — sends the bearer token."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas[PROBLEM] = _PROBLEM_SCHEMA
    schemas[VALIDATION_PROBLEM] = _VALIDATION_PROBLEM_SCHEMA
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        path_item = document["paths"].get(route.path_format, {})
        for method in route.methods or ():
            operation = path_item.get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            declared_problems = {int(status) for status in responses if str(status)[0] in "45"}
            for status in sorted(problem_statuses(route) | declared_problems):
                declared = responses.get(str(status), {})
                problem = _problem_response(status)
                if declared.get("description") and status != 422:
                    problem["description"] = declared["description"]
                responses[str(status)] = problem
            operation["responses"] = dict(sorted(responses.items()))
            if signed_in(route):
                operation["security"] = [{BEARER: []}]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    document["components"]["securitySchemes"] = {BEARER: _BEARER_SCHEME}


def document_problems(app: FastAPI, routes: Callable[[], Iterable[BaseRoute]]) -> None:
    """Makes `app.openapi()` return the document with the problem answers of `routes` added."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_problem_responses(generate(), routes())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

"""Routes are tried in order: no route may be unreachable because an earlier one, for the same
method, matches every path it would serve (as `DELETE /releases/{name}/{version}` once took
`DELETE /releases/uploads/{id}`)."""

from __future__ import annotations

import re

from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.types import Scope

from fleetkeeper.console.app import ConsoleMount
from fleetkeeper.server.app import create_device_app, create_management_app
from fleetkeeper.server.runtime import Runtime

# A value for each kind of path parameter, chosen so as not to equal any literal path segment.
SAMPLES = {
    "StringConvertor": "sample-value",
    "PathConvertor": "sample/value",
    "IntegerConvertor": "7",
    "FloatConvertor": "7.5",
    "UUIDConvertor": "00000000-0000-4000-8000-000000000000",
}
PARAMETER = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-zA-Z_][a-zA-Z0-9_]*)?\}")


def sample_path(route: Route | WebSocketRoute) -> str:
    """A concrete path that the route serves."""

    def value(match: re.Match[str]) -> str:
        return SAMPLES[type(route.param_convertors[match.group(1)]).__name__]

    return PARAMETER.sub(value, route.path)


def requests_served(route: BaseRoute) -> list[Scope]:
    """One request scope per method the route serves (its own path-matching rules aside)."""
    if isinstance(route, WebSocketRoute):
        return [{"type": "websocket", "path": sample_path(route), "root_path": ""}]
    if isinstance(route, Route):
        methods = route.methods or {"GET"}
        methods = sorted(methods - {"HEAD"} if "GET" in methods else methods)  # HEAD goes with GET
        return [{"type": "http", "path": sample_path(route), "root_path": "", "method": m} for m in methods]
    return []  # a mount serves what its application serves: checked as a routing table of its own


def shadowed_routes(routes: list[BaseRoute]) -> list[str]:
    found = []
    for index, route in enumerate(routes):
        for scope in requests_served(route):
            for earlier in routes[:index]:
                if earlier.matches(scope)[0] == Match.FULL:
                    method = scope.get("method", "WEBSOCKET")
                    found.append(f"{method} {route.path} is taken by {getattr(earlier, 'path', earlier)}")  # type: ignore[attr-defined]
                    break
    return found


def in_matching_order(routes: list[BaseRoute]) -> list[BaseRoute]:
    """The routes as the application tries them: FastAPI keeps an included router as one entry
    that tries the router's own routes in their order."""
    flat: list[BaseRoute] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        flat += in_matching_order(included.routes) if included is not None else [route]
    return flat


def routing_tables(runtime: Runtime) -> dict[str, list[BaseRoute]]:
    management = create_management_app(runtime)
    tables = {
        "management": in_matching_order(management.router.routes),
        "device": in_matching_order(create_device_app(runtime).router.routes),
    }
    for route in management.router.routes:
        if isinstance(route, ConsoleMount):
            tables["console"] = in_matching_order(route.app.router.routes)  # type: ignore[attr-defined]
    return tables


def test_no_route_is_shadowed_by_an_earlier_one(runtime: Runtime) -> None:
    tables = routing_tables(runtime)
    paths = {name: {getattr(route, "path", None) for route in routes} for name, routes in tables.items()}
    # What is checked is the real table, routers expanded, not only their wrappers.
    assert "/api/v1/releases/uploads/{upload_id}" in paths["management"]
    assert "/device/v1/enroll" in paths["device"]
    assert "/devices/{device_id}" in paths["console"]
    shadowed = {name: shadowed_routes(routes) for name, routes in tables.items()}
    assert shadowed == {name: [] for name in tables}


def test_the_check_sees_a_shadowed_route() -> None:
    async def endpoint() -> None: ...

    routes: list[BaseRoute] = [
        Route("/releases/{name}/{version}", endpoint, methods=["DELETE"]),
        Route("/releases/uploads/{upload_id}", endpoint, methods=["DELETE", "PATCH"]),
        Mount("/static", routes=[]),
        Route("/static/vendor/{name}", endpoint, methods=["GET"]),
    ]
    assert shadowed_routes(routes) == [
        "DELETE /releases/uploads/{upload_id} is taken by /releases/{name}/{version}",
        "GET /static/vendor/{name} is taken by /static",
    ]

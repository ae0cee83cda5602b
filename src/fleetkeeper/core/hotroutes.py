"""The few device requests the whole fleet sends all the time, answered before FastAPI's routing.

A check-in that changes nothing, and ping, are most of a device listener's requests. FastAPI's
route matching (a regular expression per route tried), its dependency solving and its exception
and exit-stack layers cost about a quarter of such a request's CPU (docs/benchmarks.md, device
check-ins). Here an exact `GET` path goes straight to its hot handler, inside the request's edge,
the body limit and the certificate gate (so it has its id, access line, metrics and a verified
peer), with what the route would use: the services it was bound to and the peer certificate. A
handler answers with the route's own response, raises a `ProblemError` (answered as the app's
handler would), or returns None: then, as for anything else, the request goes on to the FastAPI
app and its route answers in full (the general path), which can tell that the hot handler
already ran (`hot_handler_missed`) and skip what it tried."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetkeeper.core.errors import ProblemError, response_for
from fleetkeeper.core.peer import PeerCertificate, peer_certificate

# Bound by the composition root to the services it uses (server/app.py).
HotHandler = Callable[[PeerCertificate], Awaitable[Response | None]]

# Set in the scope of a request whose hot handler answered None.
_MISSED = "fleetkeeper.hot_handler_missed"


def hot_handler_missed(connection: HTTPConnection) -> bool:
    """This request's hot handler ran and left it to the route: what it tried need not run again."""
    return bool(connection.scope.get(_MISSED))


@dataclass(frozen=True)
class HotRoute:
    """A path's hot handler, and the FastAPI route that answers the same path in full (its
    template names the request in the metrics and the access log, as when the route answers)."""

    route: APIRoute
    handler: HotHandler


class HotRoutes:
    def __init__(self, app: ASGIApp, routes: Mapping[str, HotRoute]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        peer = peer_certificate(scope) if hot is not None else None
        if hot is not None and peer is not None:
            scope["route"] = hot.route
            try:
                response = await hot.handler(peer)
            except ProblemError as problem:
                response = response_for(problem)
            if response is not None:
                await response(scope, receive, send)
                return
            del scope["route"]
            scope[_MISSED] = True
        await self.app(scope, receive, send)


def route_for(app_routes: Iterable[BaseRoute], path_template: str) -> APIRoute:
    """The app's GET route with this template (a hot path must have one to fall back to)."""
    for route in app_routes:
        if isinstance(route, APIRoute) and route.path == path_template and "GET" in (route.methods or ()):
            return route
    raise LookupError(f"no GET route {path_template!r} to answer what its hot handler leaves")

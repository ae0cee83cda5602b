"""The two ASGI applications of one server process: management and devices."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from fastapi import APIRouter, FastAPI
from starlette.routing import BaseRoute

import fleetkeeper
from fleetkeeper.core.bodylimit import BodySizeLimitMiddleware
from fleetkeeper.core.edge import RequestEdgeMiddleware
from fleetkeeper.core.errors import install_problem_handlers
from fleetkeeper.core.health import router as health_router
from fleetkeeper.core.hotroutes import HotRoute, HotRoutes, route_for
from fleetkeeper.core.metrics import NO_TELEMETRY
from fleetkeeper.core.openapi import document_problems
from fleetkeeper.core.peer import DeviceCertificateGate
from fleetkeeper.core.queries import REFUSE_UNKNOWN_QUERY_PARAMETERS
from fleetkeeper.server.runtime import Runtime
from fleetkeeper.server.wiring import wire_domains

# The API's documentation (FastAPI's OpenAPI document, and the page that shows it): public, and
# the only routes that declare no access rule.
FRAMEWORK_PUBLIC_PATHS = frozenset({"/api/docs", "/api/openapi.json"})


def management_routers() -> list[APIRouter]:
    wire_domains()
    from fleetkeeper.access.api import router as access_router
    from fleetkeeper.access.auth_api import auth_router, me_router
    from fleetkeeper.audit.api import router as audit_router
    from fleetkeeper.deployments.api import device_deployments_router, webhook_router
    from fleetkeeper.deployments.api import router as deployments_router
    from fleetkeeper.devices.admin_api import router as devices_router
    from fleetkeeper.releases.api import router as releases_router
    from fleetkeeper.releases.upload_api import router as uploads_router
    from fleetkeeper.terminal.api import router as terminal_router

    # Routes are tried in order: `/releases/uploads/{id}` before `/releases/{name}/{version}`,
    # which would otherwise take an upload's DELETE (tests/core/test_route_order.py).
    return [
        health_router,
        auth_router,
        me_router,
        access_router,
        audit_router,
        devices_router,
        uploads_router,
        releases_router,
        deployments_router,
        device_deployments_router,
        webhook_router,
        terminal_router,
    ]


def device_routers() -> list[APIRouter]:
    from fleetkeeper.deployments.api import device_router as deployments_device_router
    from fleetkeeper.deployments.director.device_api import router as director_router
    from fleetkeeper.devices.api import router as device_router
    from fleetkeeper.releases.device_api import router as releases_device_router
    from fleetkeeper.terminal.device_api import router as terminal_device_router

    # Routes are tried in order: what every device polls (the check-in, then ping) comes first.
    return [
        director_router,
        releases_device_router,
        device_router,
        deployments_device_router,
        terminal_device_router,
    ]


# Bodies above the 1 MiB default: release upload chunks.
BODY_LIMITS = {"/api/v1/releases/uploads/": 64 * 1024 * 1024}


def _include(
    app: FastAPI, runtime: Runtime, routers: list[APIRouter], *, strict_queries: bool = False
) -> None:
    app.state.runtime = runtime
    app.state.routers = routers
    dependencies = [REFUSE_UNKNOWN_QUERY_PARAMETERS] if strict_queries else None
    for router in routers:
        app.include_router(router, dependencies=dependencies)
    install_problem_handlers(app)


def _wrap(app: FastAPI, runtime: Runtime, listener: str) -> FastAPI:
    """Shared by both listeners; added last means outermost: the request's edge (its id, access
    line, metrics, unhandled errors), then the body size limit."""
    # A file sent to a device is bounded by its own setting (the route checks Content-Length too).
    limits = {**BODY_LIMITS, "/api/v1/devices/*/files": runtime.settings.terminal_max_file_bytes}
    app.add_middleware(BodySizeLimitMiddleware, limits=limits)
    app.add_middleware(RequestEdgeMiddleware, listener=listener)
    return app


def app_routes(app: FastAPI) -> Iterator[BaseRoute]:
    """Every API route the app serves, as declared: the routers' own routes and the framework's."""
    for router in app.state.routers:
        yield from router.routes
    for route in app.router.routes:
        if getattr(route, "path", None) in FRAMEWORK_PUBLIC_PATHS:
            yield route


def console_routes(app: FastAPI) -> Iterator[BaseRoute]:
    """The console's page routes (static files aside), as mounted in the management app."""
    from fleetkeeper.console.app import ConsoleMount

    for route in app.router.routes:
        if isinstance(route, ConsoleMount):
            for router in route.app.state.routers:  # type: ignore[attr-defined]
                yield from router.routes


def create_management_app(runtime: Runtime) -> FastAPI:
    # FastAPI's own documentation pages are off: they load their scripts from a public CDN and
    # start them inline. The console serves /api/docs from its pinned copy (console/apidocs.py).
    app = FastAPI(
        title="fleetkeeper",
        version=fleetkeeper.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        swagger_ui_oauth2_redirect_url=None,
        telemetry=NO_TELEMETRY,
    )
    from fleetkeeper.console.apidocs import api_docs_route
    from fleetkeeper.console.app import mount_console

    _include(app, runtime, management_routers(), strict_queries=True)
    document_problems(app, lambda: app_routes(app))
    app.router.routes.append(api_docs_route("/api/docs", title=app.title, openapi_url="/api/openapi.json"))
    _wrap(app, runtime, "management")
    mount_console(app, runtime)
    return app


def create_device_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="fleetkeeper device API",
        version=fleetkeeper.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=NO_TELEMETRY,
    )
    from fleetkeeper.devices.api import PUBLIC_PATHS

    _include(app, runtime, device_routers())
    app.add_middleware(HotRoutes, routes=device_hot_routes(app, runtime))
    app.add_middleware(DeviceCertificateGate, public_paths=PUBLIC_PATHS)
    return _wrap(app, runtime, "device")


def device_hot_routes(app: FastAPI, runtime: Runtime) -> dict[str, HotRoute]:
    """What every device sends all the time: a check-in, ping (the check-in benchmark's reference
    takes the same way)."""
    from fleetkeeper.deployments.director.device_api import unchanged_check_in
    from fleetkeeper.devices.api import hot_ping

    return {
        "/device/v1/director/metadata/timestamp.json": HotRoute(
            route_for(app_routes(app), "/device/v1/director/metadata/{filename}"),
            partial(unchanged_check_in, runtime),
        ),
        "/device/v1/ping": HotRoute(
            route_for(app_routes(app), "/device/v1/ping"), partial(hot_ping, runtime)
        ),
    }

"""The two ASGI applications of one server process: management and devices."""

from __future__ import annotations

from fastapi import FastAPI

import fleetkeeper
from fleetkeeper.core.errors import UnhandledErrorMiddleware, install_problem_handlers
from fleetkeeper.core.health import router as health_router
from fleetkeeper.core.metrics import MetricsMiddleware
from fleetkeeper.core.peer import DeviceCertificateGate
from fleetkeeper.core.requestid import RequestIdMiddleware
from fleetkeeper.core.runtime import Runtime

# Reached on the device listener without a client certificate. Everything else needs one.
DEVICE_PUBLIC_PATHS: frozenset[str] = frozenset()


def _finish(app: FastAPI, runtime: Runtime, listener: str) -> FastAPI:
    """Shared by both listeners; added last means outermost: request id, then errors, then metrics."""
    app.state.runtime = runtime
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware, listener=listener)
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware, listener=listener)
    return app


def create_management_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="fleetkeeper",
        version=fleetkeeper.__version__,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.include_router(health_router)
    return _finish(app, runtime, "management")


def create_device_app(runtime: Runtime) -> FastAPI:
    from fleetkeeper.devices.api import router as device_router

    app = FastAPI(
        title="fleetkeeper device API",
        version=fleetkeeper.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(device_router)
    app.add_middleware(DeviceCertificateGate, public_paths=DEVICE_PUBLIC_PATHS)
    return _finish(app, runtime, "device")

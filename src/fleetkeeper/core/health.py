"""Liveness, readiness and metrics routes of the management listener."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from fleetkeeper.core.context import infrastructure
from fleetkeeper.core.errors import problem_response
from fleetkeeper.core.metrics import metrics_response
from fleetkeeper.core.migrations import migration_state
from fleetkeeper.core.queries import ANY_QUERY
from fleetkeeper.core.routeaccess import public_dependency

router = APIRouter(tags=["health"], dependencies=[Depends(public_dependency), ANY_QUERY])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=None, responses={503: {"description": "Not ready: the problem says why"}}
)
async def readyz(request: Request) -> dict[str, Any] | Response:
    """The database answers and its schema is at the head this code needs."""
    runtime = infrastructure(request)
    try:
        async with runtime.database.session() as session:
            await session.execute(text("SELECT 1"))
        state = await migration_state(runtime.database)
    except Exception:
        return problem_response(503, "database_unreachable", "the database does not answer")
    if not state.at_head:
        return problem_response(503, "migrations_pending", state.describe())
    return {"status": "ready", "database": "ok", "migrations": sorted(state.current)}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    """Prometheus exposition format."""
    return metrics_response()

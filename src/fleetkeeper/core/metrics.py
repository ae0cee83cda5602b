"""Prometheus metrics for both listeners."""

from __future__ import annotations

from typing import Any

from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import Scope

# FastAPI's own OpenTelemetry instrumentation, off: the server's metrics are Prometheus's (these)
# and its logs structlog's; on, every request looked up three providers.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

REQUESTS = Counter(
    "fleetkeeper_http_requests_total",
    "Requests handled, by listener, method, route template and status.",
    ["listener", "method", "route", "status"],
)
LATENCY = Histogram(
    "fleetkeeper_http_request_duration_seconds",
    "Time to the end of the response, by listener and route template.",
    ["listener", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# Each (listener, method, route, status)'s counter and histogram: `labels()` looks them up under
# a lock, with its arguments checked, twice per request.
_SERIES: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}


def observe_request(listener: str, scope: Scope, status: int, seconds: float) -> None:
    """One HTTP request, by its route's template (its path would make a series per device)."""
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    key = (listener, scope["method"], route, status)
    series = _SERIES.get(key)
    if series is None:
        series = (REQUESTS.labels(listener, key[1], route, str(status)), LATENCY.labels(listener, route))
        _SERIES[key] = series
    series[0].inc()
    series[1].observe(seconds)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

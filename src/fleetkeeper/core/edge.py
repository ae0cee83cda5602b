"""The edge of every request on both listeners, in one layer: its request id (taken from a
well-formed `X-Request-ID` or made, on every log line and on the response), its access-log line,
its metrics, and a 500 problem (or a 1011 close) for an exception no handler took.

One layer with one wrapper around `send` instead of three: each layer is a frame that every
message of the response, and every resumption of the request's coroutine, passes through."""

from __future__ import annotations

import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetkeeper.core.errors import problem_response
from fleetkeeper.core.logging import get_logger, request_fields
from fleetkeeper.core.metrics import observe_request
from fleetkeeper.core.requestid import REQUEST_ID_HEADER, incoming_request_id, request_id_set

access_log = get_logger("fleetkeeper.http")
error_log = get_logger("fleetkeeper.core.errors")  # the name the unhandled errors' lines have had

_STARTS_WITH_STATUS = ("http.response.start", "websocket.http.response.start")
_RESPONDED = ("http.response.start", "websocket.http.response.start", "websocket.accept", "websocket.close")


class RequestEdgeMiddleware:
    """Outermost of the app's own middlewares; the problem and the logged traceback carry the id."""

    def __init__(self, app: ASGIApp, listener: str) -> None:
        self.app = app
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or secrets.token_hex(8)
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        started = time.perf_counter()
        status: int | None = None
        responded = False

        async def edge_send(message: Message) -> None:
            nonlocal status, responded
            kind = message["type"]
            if kind in _RESPONDED:
                responded = True
                if kind in _STARTS_WITH_STATUS:
                    status = message["status"]
                    message["headers"] = [*message.get("headers", []), id_header]
                elif kind == "websocket.accept":
                    status = 101
                    message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        with request_id_set(request_id), request_fields(request_id=request_id, listener=self.listener):
            try:
                try:
                    await self.app(scope, receive, edge_send)
                except Exception:
                    error_log.exception("unhandled error", path=scope.get("path"))
                    if responded:
                        raise
                    if scope["type"] == "websocket":
                        await edge_send({"type": "websocket.close", "code": 1011})
                    else:
                        problem = problem_response(
                            500, "internal_error", "an unexpected error occurred; the request id names it"
                        )
                        await problem(scope, receive, edge_send)
            finally:
                duration = time.perf_counter() - started
                access_log.info(
                    "request",
                    method=scope.get("method", "WS"),
                    path=scope["path"],
                    status=status,
                    duration_ms=round(duration * 1000, 2),
                    client=(scope.get("client") or [None])[0],
                )
                if scope["type"] == "http":
                    observe_request(self.listener, scope, status or 500, duration)

"""Refuses request bodies over a size limit, whether the client declares the length or streams."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetkeeper.core.errors import problem_response

DEFAULT_LIMIT = 1024 * 1024


class BodySizeLimitMiddleware:
    """`limits` maps path prefixes to their own limits (an artifact upload is larger than a form);
    the longest matching prefix wins, `default` applies elsewhere. A `*` in a prefix stands for one
    path segment (`/api/v1/devices/*/files`)."""

    def __init__(
        self, app: ASGIApp, default: int = DEFAULT_LIMIT, limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.default = default
        self.limits = [
            (
                re.compile(
                    "".join("[^/]+" if part == "*" else re.escape(part) for part in re.split(r"(\*)", prefix))
                ),
                limit,
            )
            for prefix, limit in sorted((limits or {}).items(), key=lambda item: len(item[0]), reverse=True)
        ]

    def _limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if prefix.match(path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(scope, receive, send, limit)
                return
        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now and tell the app the client left: it stops reading, and whatever
                    # it still tries to send is dropped.
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused:
                raise

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            413, "payload_too_large", f"the request body is larger than {limit} bytes"
        )
        await response(scope, receive, send)

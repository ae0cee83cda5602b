"""Security headers on every console response."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No inline script or style anywhere: htmx is configured by a meta tag and all behaviour lives
# in /static/console.js. WebSockets go to the same origin (the terminal).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        # The hash is that of the empty string: an empty <style> element (xterm.js creates them;
        # terminal.js sends their rules to constructed stylesheets) and nothing else.
        "style-src 'self' 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class ResponseStartHook:
    """An ASGI middleware that may amend the status line's headers of each HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def amend(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def amended(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = await self.amend(scope, list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, amended)


class SecurityHeaders(ResponseStartHook):
    async def amend(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name for name, _ in headers}
        if b"cache-control" not in present:
            # Pages carry the user's data and, once, secrets (one-time passwords, token secrets,
            # recovery codes): no cache keeps them. Static files set their own.
            headers.append((b"cache-control", b"no-store"))
        headers += [header for header in HEADERS if header[0] not in present]
        if scope.get("scheme") == "https":
            headers.append((b"strict-transport-security", b"max-age=31536000"))
        return headers

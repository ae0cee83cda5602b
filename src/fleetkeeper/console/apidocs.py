"""The API's documentation page, `/api/docs`: Swagger UI from the console's own pinned copy.

FastAPI's page loads Swagger UI from a public CDN (a floating version, no integrity) and starts it
with an inline script, on the origin where the console's cookie lives. This page loads the copy
installed with the console's other libraries (console/assets.py) and starts it from a static file,
under the console's security headers: it runs no script but ours and the pinned library's, and
works offline.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route, request_response

from fleetkeeper.console.assets import NODE_MODULES, missing_vendor_files
from fleetkeeper.console.headers import SecurityHeaders
from fleetkeeper.console.render import ENVIRONMENT

SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")


def api_docs_route(path: str, *, title: str, openapi_url: str) -> Route:
    """The page at `path`, documenting the OpenAPI document at `openapi_url`."""

    async def page(request: Request) -> Response:
        if set(SWAGGER_UI_FILES) & set(missing_vendor_files()):
            return PlainTextResponse(
                "Swagger UI is not installed: run `make console-assets` "
                f"(npm install in {NODE_MODULES.parent})",
                status_code=503,
            )
        html = ENVIRONMENT.get_template("api_docs.html").render(title=title, openapi_url=openapi_url)
        return HTMLResponse(html)

    return Route(path, SecurityHeaders(request_response(page)), methods=["GET", "HEAD"], name="api_docs")

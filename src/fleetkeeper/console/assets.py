"""The console's static files: its own, and the npm libraries it serves as they are.

The libraries are installed by `make console-assets` (npm, exact versions from
vendor/package.json) into vendor/node_modules; only the files listed here are served.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent
NODE_MODULES = HERE / "vendor" / "node_modules"
VENDOR_FILES = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm.css": "@xterm/xterm/css/xterm.css",
    "addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
    "swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
}
# Files change only with a new version of the package, which changes nothing in their URL, so
# browsers revalidate rather than cache for long.
CACHE_CONTROL = "public, max-age=300"


def missing_vendor_files() -> list[str]:
    return [name for name, path in VENDOR_FILES.items() if not (NODE_MODULES / path).is_file()]


async def vendor_file(request: Request) -> Response:
    name = request.path_params["name"]
    relative = VENDOR_FILES.get(name)
    if relative is None:
        return PlainTextResponse("not found", status_code=404)
    path = NODE_MODULES / relative
    if not path.is_file():
        return PlainTextResponse(
            f"{name} is not installed: run `make console-assets` (npm install in {NODE_MODULES.parent})",
            status_code=503,
        )
    return FileResponse(path, headers={"Cache-Control": CACHE_CONTROL})


own_static = StaticFiles(directory=HERE / "static")

"""Management routes: the operator's terminal WebSocket, file transfer, sessions and recordings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from fleetkeeper.access.auth import authenticate, authenticate_credential, requires
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.console import session as console_session
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.core.objectstore import ObjectNotFoundError
from fleetkeeper.core.routeaccess import AccessRule, mark
from fleetkeeper.core.wire import IsSet, RowModel, Timestamp
from fleetkeeper.terminal import bridge, service
from fleetkeeper.terminal.context import terminal_context
from fleetkeeper.terminal.protocol import OPERATOR_TO_SERVER, MalformedFrameError, decode_control

router = APIRouter(prefix="/api/v1", tags=["terminal"])
Connector = Annotated[Principal, requires(Permission.DEVICES_CONNECT)]
Auditor = Annotated[Principal, requires(Permission.AUDIT_READ)]
AUTH_MESSAGE_SECONDS = 10.0

# WebSocket close codes (4000-4999 are the application's): the reason is also sent as an error frame.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_CONFLICT = 4409


async def _header_principal(connection: HTTPConnection) -> Principal | ProblemError | None:
    """The terminal's access rule: `devices:connect`, within the device's groups. A browser cannot
    set the Authorization header on a WebSocket, so without one the credential is the web console's
    session cookie (from a page of this same origin) or comes in the first message
    (`{"type": "auth", "token": …}`), never in the URL, and is checked the same way there.
    A refusal is returned, not raised: the route sends it as an error frame the client can read."""
    try:
        if "authorization" in connection.headers:
            return await authenticate(connection)
        return await console_session.websocket_principal(connection)
    except ProblemError as exc:
        return exc


TerminalAccess = Annotated[
    Principal | ProblemError | None,
    Depends(mark(AccessRule("permission", (Permission.DEVICES_CONNECT.value,)), _header_principal)),
]


def _close_code(status: int) -> int:
    return {401: CLOSE_UNAUTHENTICATED, 403: CLOSE_FORBIDDEN, 404: CLOSE_NOT_FOUND}.get(
        status, CLOSE_CONFLICT
    )


async def _refuse(websocket: WebSocket, error: ProblemError) -> None:
    await websocket.send_text(json.dumps({"type": "error", "code": error.code, "message": error.detail}))
    await websocket.close(_close_code(error.status), reason=error.code[:100])


async def _principal_from_first_message(websocket: WebSocket) -> Principal:
    try:
        async with asyncio.timeout(AUTH_MESSAGE_SECONDS):
            text = await websocket.receive_text()
        message = decode_control(text, {"auth": OPERATOR_TO_SERVER["auth"]})
    except (TimeoutError, MalformedFrameError, KeyError, RuntimeError):
        raise ProblemError(
            'send the access token first: {"type": "auth", "token": "…"}', code="unauthenticated", status=401
        ) from None
    token = message["token"]
    if not isinstance(token, str) or not token:
        raise ProblemError("auth: token is a non-empty string", code="unauthenticated", status=401)
    return await authenticate_credential(websocket, token)


@router.websocket("/devices/{device_id}/terminal")
async def terminal(
    websocket: WebSocket,
    device_id: str,
    principal: TerminalAccess,
    cols: Annotated[int, Query(ge=1, le=1000)] = 80,
    rows: Annotated[int, Query(ge=1, le=1000)] = 24,
) -> None:
    """A terminal on the device (docs/terminal.md): binary frames carry bytes, text frames control."""
    await websocket.accept()
    runtime = terminal_context(websocket)
    try:
        if isinstance(principal, ProblemError):
            raise principal
        if principal is None:
            principal = await _principal_from_first_message(websocket)
        principal.ensure(Permission.DEVICES_CONNECT)
        row = await service.begin(runtime, principal, device_id, "terminal")
    except ProblemError as exc:
        await _refuse(websocket, exc)
        return
    await bridge.TerminalBridge(runtime, websocket, principal, row, cols, rows).run()


DevicePath = Annotated[
    str, Query(min_length=1, max_length=service.MAX_PATH_LENGTH, description="absolute path")
]


class FileOut(BaseModel):
    session: str
    path: str
    size: int
    sha256: str


@router.put("/devices/{device_id}/files", status_code=201)
async def put_file(device_id: str, path: DevicePath, request: Request, principal: Connector) -> FileOut:
    """Writes the body to `path` on the device (within its configured roots)."""
    runtime = terminal_context(request)
    service.check_device_path(path)
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise ProblemError("send the file with a Content-Length", code="length_required", status=411)
    size = int(declared)
    if size > runtime.settings.terminal_max_file_bytes:
        raise ProblemError(
            f"the file is over {runtime.settings.terminal_max_file_bytes} bytes",
            code="file_too_large",
            status=413,
        )
    row = await service.begin(runtime, principal, device_id, "upload", path=path)
    result = await bridge.upload(runtime, principal, row, size, request.stream())
    return FileOut(session=result.session, path=result.path, size=result.size, sha256=result.sha256)


@router.get("/devices/{device_id}/files")
async def get_file(device_id: str, path: DevicePath, request: Request, principal: Connector) -> Response:
    """The file at `path` on the device (within its configured roots)."""
    runtime = terminal_context(request)
    service.check_device_path(path)
    row = await service.begin(runtime, principal, device_id, "download", path=path)
    download = await bridge.start_download(runtime, principal, row)
    return StreamingResponse(
        download.chunks(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(download.size), "X-Terminal-Session": row.id},
    )


class SessionOut(RowModel):
    id: str
    device_id: str
    user_id: str
    username: str
    address: str | None
    kind: str
    path: str | None
    opened_at: datetime
    closed_at: datetime | None
    close_reason: str | None
    exit_status: int | None
    bytes_in: int
    bytes_out: int
    recording: IsSet = Field(validation_alias="recording_key")


@router.get("/terminal/sessions")
async def list_sessions(
    request: Request,
    principal: Auditor,
    device_id: Annotated[str | None, Query(max_length=40)] = None,
    user_id: Annotated[str | None, Query(max_length=40)] = None,
    before: Timestamp | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE_SIZE)] = 50,
) -> list[SessionOut]:
    """Sessions and transfers, newest first; page with `before` = the last one's opened_at."""
    rows = await service.list_sessions(
        terminal_context(request).database, device_id=device_id, user_id=user_id, before=before, limit=limit
    )
    return [SessionOut.model_validate(row) for row in rows]


@router.get("/terminal/sessions/{session_id}")
async def get_session(session_id: str, request: Request, principal: Auditor) -> SessionOut:
    return SessionOut.model_validate(
        await service.get_session(terminal_context(request).database, session_id)
    )


@router.get("/terminal/sessions/{session_id}/recording")
async def recording(session_id: str, request: Request, principal: Auditor) -> Response:
    """The session's asciicast v2 recording."""
    runtime = terminal_context(request)
    row = await service.get_session(runtime.database, session_id)
    if row.recording_key is None:
        raise ProblemError("this session has no recording (yet)", code="recording_not_found", status=404)
    store = runtime.object_store
    key = row.recording_key

    async def body() -> AsyncIterator[bytes]:
        async for chunk in store.open(key):
            yield chunk

    try:
        first: Any = await store.size(key)
    except ObjectNotFoundError:
        first = None
    if first is None:
        raise ProblemError(
            "the recording is missing from the object store", code="recording_not_found", status=404
        )
    return StreamingResponse(body(), media_type="application/x-asciicast")

"""`fleetkeeper terminal`: a shell on a device from the operator's own terminal, replays of recorded
sessions, and file transfer (docs/terminal.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import httpx2
import typer
from typer.core import TyperGroup
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from fleetkeeper.terminal.protocol import decode_data, encode_data

EXIT_REFUSED = 3


class _DeviceByDefault(TyperGroup):
    """`fleetkeeper terminal DEVICE` opens a terminal: a first word that names no subcommand is the
    device of `open`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["open", *args]
        return super().parse_args(ctx, args)


terminal_app = typer.Typer(
    cls=_DeviceByDefault,
    no_args_is_help=True,
    help="A shell on a device (`fleetkeeper terminal DEVICE`), recordings, file transfer.",
)

ServerOption = Annotated[
    str, typer.Option("--server", envvar="FLEETKEEPER_SERVER", help="management URL, https://host:port")
]
TokenOption = Annotated[
    str, typer.Option("--token", envvar="FLEETKEEPER_TOKEN", help="API token or access token")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"fleetkeeper: {message}", err=True)
    return typer.Exit(code)


def _terminal_url(server: str, device: str, cols: int, rows: int) -> str:
    parts = urlsplit(server.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail(f"--server {server!r}: expected http(s)://host:port", 2)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"{parts.path}/api/v1/devices/{quote(device, safe='')}/terminal"
    return f"{scheme}://{parts.netloc}{path}?cols={cols}&rows={rows}"


def _terminal_size() -> os.terminal_size:
    """The operator's terminal as the kernel knows it now. Not COLUMNS and LINES first, as
    shutil.get_terminal_size does: after a resize they are stale."""
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        try:
            return os.get_terminal_size(stream.fileno())
        except (OSError, ValueError):
            continue
    return shutil.get_terminal_size((80, 24))


def _size(cols: int | None, rows: int | None) -> tuple[int, int]:
    if cols and rows:
        return cols, rows
    size = _terminal_size()
    return cols or size.columns, rows or size.lines


@terminal_app.command("open")
def open_terminal(
    device: Annotated[str, typer.Argument(help="device id")],
    server: ServerOption,
    token: TokenOption,
    cols: Annotated[int | None, typer.Option(help="columns (default: this terminal's)")] = None,
    rows: Annotated[int | None, typer.Option(help="rows (default: this terminal's)")] = None,
) -> None:
    """Open a shell on DEVICE. The session ends when the shell exits, on the idle timeout, or with
    the escape sequence Enter ~ . (as in ssh)."""
    width, height = _size(cols, rows)
    status = asyncio.run(_session(_terminal_url(server, device, width, height), token))
    raise typer.Exit(status)


async def _session(url: str, token: str) -> int:
    try:
        async with connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=2**20
        ) as ws:
            return await _Session(ws).run()
    except InvalidStatus as exc:
        raise _fail(f"the server refused the connection: HTTP {exc.response.status_code}") from None
    except (OSError, InvalidHandshake) as exc:
        raise _fail(f"cannot reach {url.split('?')[0]}: {exc}") from None


class _Session:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.session: str | None = None
        self.stdin = sys.stdin.fileno()
        self.stdout = sys.stdout.buffer
        self.tty = os.isatty(self.stdin)
        self.status = 0
        self._after_newline = True
        self._escape = 0

    async def run(self) -> int:
        first = await self.ws.recv()
        message = json.loads(first) if isinstance(first, str) else {}
        if message.get("type") != "opened":
            return self._ended(message)
        self.session = str(message["session"])
        saved = termios.tcgetattr(self.stdin) if self.tty else None
        loop = asyncio.get_running_loop()
        input_queue: asyncio.Queue[bytes] = asyncio.Queue(64)
        try:
            if saved is not None:
                tty.setraw(self.stdin)
                loop.add_signal_handler(signal.SIGWINCH, self._resized)
            loop.add_reader(self.stdin, self._readable, input_queue)
            sender = asyncio.create_task(self._send_input(input_queue))
            try:
                return await self._receive()
            finally:
                sender.cancel()
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(self.stdin)
            if saved is not None:
                loop.remove_signal_handler(signal.SIGWINCH)
                termios.tcsetattr(self.stdin, termios.TCSADRAIN, saved)

    def _readable(self, queue: asyncio.Queue[bytes]) -> None:
        try:
            data = os.read(self.stdin, 4096)
        except BlockingIOError:
            return
        loop = asyncio.get_running_loop()
        if not data:
            # End of input (a pipe): stop reading; the session goes on until the device ends it.
            loop.remove_reader(self.stdin)
            return
        queue.put_nowait(data)
        if queue.full():
            loop.remove_reader(self.stdin)  # resumed by _send_input: the input waits in the pipe

    async def _send_input(self, queue: asyncio.Queue[bytes]) -> None:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        while True:
            data = await queue.get()
            if self.tty and self._escaped(data):
                await self.ws.send(json.dumps({"type": "close"}))
                return
            await self.ws.send(encode_data(self.session, data))
            if queue.qsize() == 0:
                with contextlib.suppress(ValueError, OSError):
                    loop.add_reader(self.stdin, self._readable, queue)

    def _escaped(self, data: bytes) -> bool:
        """Enter ~ . ends the session from this side, as in ssh."""
        for byte in data:
            if self._escape == 0 and self._after_newline and byte == ord("~"):
                self._escape = 1
            elif self._escape == 1 and byte == ord("."):
                return True
            else:
                self._escape = 0
            self._after_newline = byte in (10, 13)
        return False

    def _resized(self) -> None:
        size = _terminal_size()
        asyncio.get_running_loop().create_task(
            self.ws.send(json.dumps({"type": "resize", "cols": size.columns, "rows": size.lines}))
        )

    async def _receive(self) -> int:
        try:
            async for frame in self.ws:
                if isinstance(frame, bytes):
                    decoded = decode_data(frame)
                    self.stdout.write(decoded.data)
                    self.stdout.flush()
                    continue
                message = json.loads(frame)
                if message.get("type") in ("closed", "refused"):
                    return self._ended(message)
                if message.get("type") == "error":
                    self._note(f"server: {message.get('code')}: {message.get('message')}")
        except ConnectionClosed:
            pass
        self._note("the connection to the server closed")
        return 1

    def _note(self, text: str) -> None:
        sys.stderr.write(("\r\n" if self.tty else "") + f"[{text}]" + ("\r\n" if self.tty else "\n"))
        sys.stderr.flush()

    def _ended(self, message: dict[str, Any]) -> int:
        kind = message.get("type")
        if kind == "closed":
            status = message.get("exit_status")
            self._note(f"session closed: {message.get('reason')}: {message.get('message')}")
            return status if isinstance(status, int) and 0 <= status < 256 else 0
        self._note(f"{kind or 'refused'}: {message.get('code')}: {message.get('message')}")
        return EXIT_REFUSED


@terminal_app.command("replay")
def replay(
    session: Annotated[str, typer.Argument(help="terminal session id")],
    server: ServerOption,
    token: TokenOption,
    speed: Annotated[float, typer.Option(help="playback speed; 0 prints at once", min=0)] = 1.0,
    max_wait: Annotated[float, typer.Option(help="longest pause between outputs, in seconds", min=0)] = 2.0,
) -> None:
    """Play a recorded session back (asciicast v2) on this terminal. Needs audit:read."""
    response = _request(
        "GET", server, f"/api/v1/terminal/sessions/{quote(session, safe='')}/recording", token
    )
    lines = response.content.decode("utf-8", errors="replace").splitlines()
    previous = 0.0
    for line in lines[1:]:
        try:
            moment, kind, text = json.loads(line)
        except (ValueError, TypeError):
            continue
        if kind != "o":
            continue
        if speed > 0:
            time.sleep(min(max_wait, max(0.0, float(moment) - previous)) / speed)
        previous = float(moment)
        sys.stdout.write(text)
        sys.stdout.flush()


@terminal_app.command("put")
def put(
    device: Annotated[str, typer.Argument(help="device id")],
    local: Annotated[Path, typer.Argument(help="the file to send", exists=True, dir_okay=False)],
    remote: Annotated[str, typer.Argument(help="absolute path on the device")],
    server: ServerOption,
    token: TokenOption,
) -> None:
    """Upload LOCAL to REMOTE on DEVICE (within the device's file_roots)."""
    with local.open("rb") as handle:
        response = _request(
            "PUT",
            server,
            f"/api/v1/devices/{quote(device, safe='')}/files",
            token,
            params={"path": remote},
            content=handle.read(),
        )
    body = response.json()
    typer.echo(f"sent {body['size']} bytes to {device}:{body['path']} (sha256 {body['sha256']})")


@terminal_app.command("get")
def get(
    device: Annotated[str, typer.Argument(help="device id")],
    remote: Annotated[str, typer.Argument(help="absolute path on the device")],
    local: Annotated[Path, typer.Argument(help="where to write it")],
    server: ServerOption,
    token: TokenOption,
) -> None:
    """Download REMOTE from DEVICE into LOCAL."""
    url = server.rstrip("/") + f"/api/v1/devices/{quote(device, safe='')}/files"
    partial = local.with_name(local.name + ".part")
    try:
        with httpx2.stream(
            "GET", url, params={"path": remote}, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise _fail(_problem(response))
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
    except httpx2.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise _fail(f"GET {url}: {exc}") from None
    partial.replace(local)
    typer.echo(f"received {local.stat().st_size} bytes from {device}:{remote}")


@terminal_app.command("sessions")
def sessions(
    server: ServerOption,
    token: TokenOption,
    device: Annotated[str | None, typer.Option(help="only this device's")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
) -> None:
    """List terminal sessions and file transfers, newest first. Needs audit:read."""
    params: dict[str, Any] = {"limit": limit}
    if device:
        params["device_id"] = device
    for item in _request("GET", server, "/api/v1/terminal/sessions", token, params=params).json():
        typer.echo(
            f"{item['id']}  {item['kind']:<8} {item['device_id']}  {item['username']}  "
            f"{item['opened_at']}  {item['close_reason'] or 'open'}"
        )


def _request(method: str, server: str, path: str, token: str, **kwargs: Any) -> httpx2.Response:
    url = server.rstrip("/") + path
    try:
        response = httpx2.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
        )
    except httpx2.HTTPError as exc:
        raise _fail(f"{method} {url}: {exc}") from None
    if response.status_code >= 400:
        raise _fail(_problem(response))
    return response


def _problem(response: httpx2.Response) -> str:
    try:
        problem = response.json()
        return f"{problem.get('code', 'http_error')}: {problem.get('detail', response.text)}"
    except ValueError:
        return f"http_{response.status_code}: {response.text[:200]}"

"""`fleetkeeper-agent channel`: the device's control channel, a WebSocket to the device listener over
the device's mTLS, kept open (reconnecting with back-off). Nothing listens on the device: the
server asks through this channel for terminal sessions (a login shell on a PTY) and file transfers,
within what `[terminal]` allows. The frames are in docs/terminal.md ("Protocol").

The supervisor runs it as a process of its own next to the check-in loop and restarts it if it
dies, so that the daemon's own loop stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fleetkeeper_agent.channel_files import DownloadSender, Upload
from fleetkeeper_agent.channel_protocol import MAX_FRAME, RefusedError, decode_data, encode_data
from fleetkeeper_agent.config import AgentConfig, TerminalConfig
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.pty_sessions import PtySession

log = logging.getLogger(__name__)

CHANNEL_PATH = "/device/v1/channel"
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class Channel:
    """One connection's worth of sessions; all of them end when the connection does."""

    def __init__(self, connection: ClientConnection, config: TerminalConfig) -> None:
        self.connection = connection
        self.config = config
        self.terminals: dict[str, PtySession] = {}
        self.transfers: dict[str, Upload | DownloadSender] = {}

    async def send_json(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.connection.send(json.dumps(message))

    async def send_data(self, session: str, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.connection.send(encode_data(session, data))

    async def serve(self) -> None:
        try:
            async for frame in self.connection:
                if isinstance(frame, bytes):
                    await self._data(frame)
                else:
                    await self._control(frame)
        except ConnectionClosed as exc:
            log.info("channel: the connection closed (%s)", exc)
        finally:
            await self.close_all("device_disconnected")

    async def close_all(self, reason: str) -> None:
        for session in list(self.terminals.values()):
            await session.close(reason)
        for transfer in list(self.transfers.values()):
            transfer.abort()
        self.transfers.clear()

    async def _data(self, frame: bytes) -> None:
        decoded = decode_data(frame)
        if decoded is None:
            log.warning("channel: a malformed data frame from the server")
            return
        session, data = decoded
        if session in self.terminals:
            await self.terminals[session].write(data)
        elif isinstance(transfer := self.transfers.get(session), Upload):
            try:
                await transfer.write(data)
            except AgentError as exc:
                self.transfers.pop(session, None)
                transfer.abort()
                await self.send_json(
                    {"type": "file_error", "session": session, "code": exc.code, "message": exc.message}
                )

    async def _control(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind, session = message["type"], message.get("session")
        except (ValueError, KeyError, TypeError):
            log.warning("channel: a malformed control frame from the server")
            return
        if kind == "error":
            log.warning("channel: the server said %s: %s", message.get("code"), message.get("message"))
            return
        if not isinstance(session, str):
            return
        try:
            if kind == "open":
                await self._open(session, message)
            elif kind == "resize" and session in self.terminals:
                self.terminals[session].resize(int(message["cols"]), int(message["rows"]))
            elif kind == "close":
                if session in self.terminals:
                    await self.terminals[session].close(str(message.get("reason") or "operator_closed"))
                elif session in self.transfers:
                    self.transfers.pop(session).abort()
            elif kind == "file_put":
                self._check_files_allowed()
                upload = Upload(self, session, str(message["path"]), int(message["size"]))
                self.transfers[session] = upload
                await self.send_json({"type": "file_ready", "session": session})
            elif kind == "file_end" and isinstance(transfer := self.transfers.get(session), Upload):
                self.transfers.pop(session)
                size, digest = transfer.finish()
                await self.send_json({"type": "file_end", "session": session, "size": size, "sha256": digest})
            elif kind == "file_get":
                self._check_files_allowed()
                limit = min(
                    int(message.get("max_bytes", self.config.max_file_bytes)), self.config.max_file_bytes
                )
                sender = DownloadSender(self, session, str(message["path"]), limit)
                self.transfers[session] = sender
                sender.start()
            elif kind == "file_ack" and isinstance(transfer := self.transfers.get(session), DownloadSender):
                transfer.acknowledge(int(message["received"]))
        except AgentError as exc:
            transfer = self.transfers.pop(session, None)
            if transfer is not None:
                transfer.abort()
            answer = "refused" if kind == "open" else "file_error"
            await self.send_json(
                {"type": answer, "session": session, "code": exc.code, "message": exc.message}
            )
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("channel: a malformed %s from the server: %s", kind, exc)

    def _check_files_allowed(self) -> None:
        if not self.config.enabled:
            raise RefusedError("terminal_disabled", "the device's owner switched remote access off")
        if not self.config.file_roots:
            raise RefusedError("files_disabled", "no file_roots are configured on the device")

    async def _open(self, session: str, message: dict[str, Any]) -> None:
        if not self.config.enabled:
            raise RefusedError("terminal_disabled", "the device's owner switched the terminal off")
        if len(self.terminals) >= self.config.max_sessions:
            raise RefusedError(
                "too_many_sessions", f"the device allows {self.config.max_sessions} sessions at once"
            )
        cols, rows = int(message.get("cols", 80)), int(message.get("rows", 24))
        if not (1 <= cols <= 1000 and 1 <= rows <= 1000):
            raise RefusedError("invalid_size", "cols and rows are 1 to 1000")
        pty_session = PtySession(self, session, self.config)
        pty_session.spawn(cols, rows)
        self.terminals[session] = pty_session
        await self.send_json({"type": "opened", "session": session})
        pty_session.start()


# --- the process ------------------------------------------------------------------------------


def enrolled_connection(data_dir: Path) -> tuple[str, ssl.SSLContext] | None:
    """The channel's URL and an mTLS context from the files enrollment left (identity.json,
    device.crt, device.key, ca.crt), or None before the device is accepted.

    Read with the standard library alone: this process stays resident, and the identity module's
    imports (the HTTP client, cryptography) would double its memory for nothing it needs. The
    context is the one `client.tls_context` makes: the fleet CA alone, the server's name checked."""
    try:
        identity = json.loads((data_dir / "identity.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(identity, dict) or identity.get("status") != "accepted":
        return None
    server_url = identity.get("server_url")
    if not isinstance(server_url, str) or not server_url.startswith("https://"):
        raise ValueError(f"identity.json: server_url {server_url!r} is not an https URL")
    if not (data_dir / "device.crt").exists() or not (data_dir / "ca.crt").exists():
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(data_dir / "ca.crt"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(data_dir / "device.crt", data_dir / "device.key")
    return channel_url(server_url), context


def channel_url(server_url: str) -> str:
    return "wss://" + server_url.split("://", 1)[1].rstrip("/") + CHANNEL_PATH


async def keep_channel_open(config: AgentConfig, stop: asyncio.Event) -> None:
    """Connects, serves, reconnects after 1 s, 2 s, 4 s … up to a minute, until `stop`."""
    failures = 0
    while not stop.is_set():
        connected = False
        try:
            # Read again each time: the certificate may have been renewed or the key rotated since.
            enrolled = enrolled_connection(config.data_dir)
            if enrolled is None:
                log.info("channel: not enrolled yet; waiting")
            else:
                url, context = enrolled
                async with connect(url, ssl=context, max_size=MAX_FRAME, open_timeout=30) as connection:
                    connected = True
                    failures = 0
                    log.info("channel: connected to %s", url)
                    serving = asyncio.create_task(Channel(connection, config.terminal).serve())
                    stopping = asyncio.create_task(stop.wait())
                    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    if not serving.done():
                        serving.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await serving
                    log.info("channel: disconnected")
        except (OSError, ssl.SSLError, InvalidHandshake, InvalidURI, ConnectionClosed, TimeoutError) as exc:
            log.warning("channel: %s", getattr(exc, "strerror", None) or exc or type(exc).__name__)
        except Exception as exc:
            log.warning("channel: %s", exc)
        if not connected:
            failures += 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** max(0, failures - 1)) if failures else FIRST_BACKOFF
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)


async def run_channel(config: AgentConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await keep_channel_open(config, stop)
    return 0

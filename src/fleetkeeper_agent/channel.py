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
import fcntl
import hashlib
import json
import logging
import os
import pwd
import signal
import ssl
import struct
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fleetkeeper_agent.config import AgentConfig, TerminalConfig
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.files import components_beneath, create_file_beneath, open_file_beneath

log = logging.getLogger(__name__)

CHANNEL_PATH = "/device/v1/channel"
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
READ_CHUNK = 16 * 1024
OUTPUT_QUEUE = 64  # chunks read from a PTY and not yet sent; reading pauses when full
MAX_PENDING_INPUT = 256 * 1024  # input the shell has not read yet; more ends the session
FILE_WINDOW = 512 * 1024  # download bytes sent ahead of the server's acks
FILE_ACK_EVERY = 64 * 1024
KILL_GRACE_SECONDS = 2.0
MAX_FRAME = 1024 * 1024


def encode_data(session: str, data: bytes) -> bytes:
    raw = session.encode("ascii")
    return bytes([len(raw)]) + raw + data


def decode_data(frame: bytes) -> tuple[str, bytes] | None:
    if not frame or len(frame) < 1 + frame[0]:
        return None
    try:
        return frame[1 : 1 + frame[0]].decode("ascii"), frame[1 + frame[0] :]
    except UnicodeDecodeError:
        return None


class RefusedError(AgentError):
    """What the device refuses the operator, sent back as `refused` or `file_error` with its code. The
    file helpers' own AgentErrors (`path_not_allowed`, `not_found`, …) are sent back the same way."""


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


# --- terminal sessions ------------------------------------------------------------------------


def _login(config: TerminalConfig) -> tuple[pwd.struct_passwd, str]:
    """Who the shell runs as, and which shell: the configured user when the agent is root (never
    root itself by default), the agent's own user otherwise."""
    try:
        account = pwd.getpwnam(config.user) if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    except KeyError:
        raise RefusedError("terminal_user_missing", f"no user {config.user!r} on the device") from None
    shell = config.shell or account.pw_shell or "/bin/sh"
    if not os.access(shell, os.X_OK):
        raise RefusedError("shell_not_found", f"{shell} is not an executable shell")
    return account, shell


class PtySession:
    def __init__(self, channel: Channel, session: str, config: TerminalConfig) -> None:
        self.channel = channel
        self.session = session
        self.config = config
        self.pid = 0
        self.master = -1
        self.exit_status: int | None = None
        self.closed = False
        self.last_activity = time.monotonic()
        self.started = time.monotonic()
        self._output: asyncio.Queue[bytes | None] = asyncio.Queue(OUTPUT_QUEUE)
        self._reading = False
        self._pending_input = bytearray()
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, cols: int, rows: int) -> None:
        account, shell = _login(self.config)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _exec_shell(master, slave, account, shell)
        os.close(slave)
        os.set_blocking(master, False)
        self.pid, self.master = pid, master

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._resume_reading()
        self._tasks = [loop.create_task(self._send_output()), loop.create_task(self._watch())]

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed:
            asyncio.get_running_loop().add_reader(self.master, self._readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.master)
            self._reading = False

    def _readable(self) -> None:
        try:
            data = os.read(self.master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: every slave end is closed
            data = b""
        if not data:
            # End of output: `_watch` reaps the shell, drains what is left and closes.
            self._pause_reading()
            return
        self.last_activity = time.monotonic()
        self._output.put_nowait(data)
        if self._output.full():
            # The server is not taking output as fast as the shell makes it: the shell waits.
            self._pause_reading()

    async def _send_output(self) -> None:
        while True:
            data = await self._output.get()
            if data is None:
                return
            await self.channel.send_data(self.session, data)
            if self._output.qsize() < OUTPUT_QUEUE // 2:
                self._resume_reading()

    async def _watch(self) -> None:
        """The shell's exit, the idle timeout and the session's maximum length."""
        while not self.closed:
            await asyncio.sleep(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG does not block
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
                await self._drain()
                await self.close("exited")
                return
            now = time.monotonic()
            if now - self.last_activity > self.config.idle_timeout:
                await self.close("idle_timeout")
                return
            if now - self.started > self.config.max_session_seconds:
                await self.close("max_session_length")
                return

    async def _drain(self) -> None:
        """What the shell wrote just before it exited."""
        self._pause_reading()
        while True:
            try:
                data = os.read(self.master, READ_CHUNK)
            except OSError:
                break
            if not data:
                break
            await self._output.put(data)
        await self._output.put(None)
        sender = self._tasks[0] if self._tasks else None
        if sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = time.monotonic()
        if len(self._pending_input) + len(data) > MAX_PENDING_INPUT:
            await self.close("input_flood")
            return
        self._pending_input += data
        self._flush_input()

    def _flush_input(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_writer(self.master)
        if self.closed:
            return
        try:
            written = os.write(self.master, self._pending_input)
        except BlockingIOError:
            written = 0
        except OSError:
            return
        del self._pending_input[:written]
        if self._pending_input:
            loop.add_writer(self.master, self._flush_input)

    def resize(self, cols: int, rows: int) -> None:
        if not self.closed and 1 <= cols <= 1000 and 1 <= rows <= 1000:
            # The kernel signals SIGWINCH to the terminal's foreground process group.
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def close(self, reason: str) -> None:
        """Ends the shell and everything it started in its process group, and reaps it: no
        process is left behind."""
        if self.closed:
            return
        self.closed = True
        self.channel.terminals.pop(self.session, None)
        loop = asyncio.get_running_loop()
        self._pause_reading()
        loop.remove_writer(self.master)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self.exit_status is None:
            self.exit_status = await _end_process_group(self.pid)
        else:  # the shell exited; jobs it left in its session go with it
            _signal_session(self.pid, signal.SIGHUP)
            _signal_session(self.pid, signal.SIGKILL)
        os.close(self.master)
        await self.channel.send_json(
            {"type": "closed", "session": self.session, "reason": reason, "exit_status": self.exit_status}
        )


def _exec_shell(master: int, slave: int, account: pwd.struct_passwd, shell: str) -> None:
    """In the forked child: a new session whose controlling terminal is the PTY, the user's
    identity, a login shell. Any failure ends the child with 127."""
    try:
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        if os.geteuid() == 0:
            os.initgroups(account.pw_name, account.pw_gid)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        env = {
            "HOME": account.pw_dir,
            "USER": account.pw_name,
            "LOGNAME": account.pw_name,
            "SHELL": shell,
            "TERM": "xterm-256color",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        try:
            os.chdir(account.pw_dir)
        except OSError:
            os.chdir("/")
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.execve(shell, ["-" + os.path.basename(shell)], env)  # noqa: S606 - the user's login shell
    finally:
        os._exit(127)


async def _end_process_group(pid: int) -> int | None:
    """Hangs the terminal's session up: SIGHUP to every process of the shell's session (the shell,
    and the jobs it started in process groups of their own), SIGKILL to whatever is left after a
    grace period or once the shell is gone; returns the shell's exit status."""
    _signal_session(pid, signal.SIGHUP)
    _signal_session(pid, signal.SIGCONT)  # a stopped job would not see the hang-up
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    status: int | None = None
    while time.monotonic() < deadline:
        try:
            done, raw = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG does not block
        except ChildProcessError:
            break
        if done:
            status = os.waitstatus_to_exitcode(raw)
            break
        await asyncio.sleep(0.05)
    _signal_session(pid, signal.SIGKILL)
    if status is None:
        try:
            # After SIGKILL the exit is immediate; this wait does not hold the loop.
            _, raw = os.waitpid(pid, 0)  # noqa: ASYNC222
            status = os.waitstatus_to_exitcode(raw)
        except ChildProcessError:
            pass
    return status


def _signal_session(session: int, signum: int) -> None:
    """Every process whose session is the shell's (setsid made the shell its leader). A process that
    started a session of its own (setsid, a daemon) has left the terminal on purpose, as with ssh."""
    for pid in [session, *_session_members(session)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == session:
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # after the name: state, ppid, pgrp, session
            members.append(int(entry))
    return members


# --- file transfer ----------------------------------------------------------------------------


class Upload:
    """Bytes from the operator into a temporary file beside the target, renamed into place once
    all have arrived: a broken transfer never leaves half a file under the target's name. The
    directory is held open from the request on (files.create_file_beneath): no link swapped in
    afterwards redirects the file."""

    def __init__(self, channel: Channel, session: str, path: str, size: int) -> None:
        config = channel.config
        if size < 0 or size > config.max_file_bytes:
            raise RefusedError(
                "file_too_large", f"the device accepts files up to {config.max_file_bytes} bytes"
            )
        root, parts = components_beneath(path, config.file_roots)
        self.path = path
        with _io_refusal(path):
            self.file = create_file_beneath(root, parts)
        self.channel = channel
        self.session = session
        self.size = size
        self.received = 0
        self.acked = 0
        self.digest = hashlib.sha256()

    async def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.size:
            raise RefusedError("length_mismatch", "more bytes than announced")
        self.digest.update(data)
        with _io_refusal(self.path):
            self.file.write(data)
        if self.received - self.acked >= FILE_ACK_EVERY:
            self.acked = self.received
            await self.channel.send_json(
                {"type": "file_ack", "session": self.session, "received": self.received}
            )

    def finish(self) -> tuple[int, str]:
        if self.received != self.size:
            self.abort()
            raise RefusedError("length_mismatch", f"{self.received} bytes arrived, {self.size} announced")
        with _io_refusal(self.path):
            self.file.commit()
        log.info("channel: received %s (%d bytes)", self.path, self.size)
        return self.size, self.digest.hexdigest()

    def abort(self) -> None:
        self.file.discard()


@contextlib.contextmanager
def _io_refusal(path: str) -> Iterator[None]:
    """A filesystem error (a full disk, a permission) is the operator's `io_error`, not the channel's end."""
    try:
        yield
    except OSError as exc:
        raise RefusedError("io_error", f"{path}: {exc.strerror or exc}") from None


class DownloadSender:
    """A file to the operator. It is opened when the request comes (files.open_file_beneath), and what
    is sent is what that descriptor reads: a link swapped in afterwards is never followed."""

    def __init__(self, channel: Channel, session: str, path: str, limit: int) -> None:
        root, parts = components_beneath(path, channel.config.file_roots)
        with _io_refusal(path):
            fd, info = open_file_beneath(root, parts)
        if info.st_size > limit:
            os.close(fd)
            raise RefusedError("file_too_large", f"{path} is over {limit} bytes")
        self.source = os.fdopen(fd, "rb")
        self.channel = channel
        self.session = session
        self.size = info.st_size
        self.acked = 0
        self._acked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send())

    def acknowledge(self, received: int) -> None:
        self.acked = max(self.acked, received)
        self._acked.set()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.source.close()  # a task cancelled before it ran would not close it

    async def _send(self) -> None:
        channel, session = self.channel, self.session
        await channel.send_json({"type": "file_start", "session": session, "size": self.size})
        digest = hashlib.sha256()
        sent = 0
        try:
            with self.source as handle:
                while sent < self.size:
                    while sent - self.acked > FILE_WINDOW:
                        self._acked.clear()
                        await self._acked.wait()
                    chunk = handle.read(min(READ_CHUNK, self.size - sent))
                    if not chunk:
                        break
                    digest.update(chunk)
                    sent += len(chunk)
                    await channel.send_data(session, chunk)
        except OSError as exc:
            await channel.send_json(
                {"type": "file_error", "session": session, "code": "io_error", "message": str(exc)}
            )
            return
        finally:
            channel.transfers.pop(session, None)
        await channel.send_json(
            {"type": "file_end", "session": session, "size": sent, "sha256": digest.hexdigest()}
        )


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

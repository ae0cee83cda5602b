"""Terminal sessions the server opens over the control channel: a login shell on a PTY, its output
sent on with back-pressure, its process group ended with the session."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import signal
import struct
import termios
import time
from typing import TYPE_CHECKING

from fleetkeeper_agent.channel_protocol import READ_CHUNK, RefusedError
from fleetkeeper_agent.config import TerminalConfig

if TYPE_CHECKING:
    from fleetkeeper_agent.channel import Channel

OUTPUT_QUEUE = 64  # chunks read from a PTY and not yet sent; reading pauses when full
MAX_PENDING_INPUT = 256 * 1024  # input the shell has not read yet; more ends the session
KILL_GRACE_SECONDS = 2.0


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

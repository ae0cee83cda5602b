"""Remote terminal end to end: a real server, a real agent's control channel, real PTYs, the CLI.

One server and one set of devices for the module: each test opens its own sessions."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from fleetkeeper.terminal.protocol import decode_data, encode_data
from tests.conftest import fleetkeeper_command
from tests.e2e.fleet import Agent, Fleet
from tests.terminal.support import ChannelProcess, enrolled_agent, run_cli, run_terminal

pytestmark = pytest.mark.timeout(300)


@dataclass
class Devices:
    fleet: Fleet
    shell: Agent
    shell_channel: ChannelProcess
    idle: Agent
    disabled: Agent
    raw: Agent
    token: str


@pytest.fixture(scope="module")
async def devices(module_fleet: Fleet) -> AsyncIterator[Devices]:
    fleet = module_fleet
    roots = [str(fleet.workdir / "agents" / "shell-device" / "files")]
    shell, idle, disabled, raw = await asyncio.gather(
        enrolled_agent(fleet, "shell-device", max_sessions=3, file_roots=roots, max_file_bytes=1024 * 1024),
        enrolled_agent(fleet, "idle-device", idle_timeout=2, max_sessions=1),
        enrolled_agent(fleet, "disabled-device", enabled=False),
        # No agent runs for this one: the tests speak its side of the channel themselves.
        enrolled_agent(fleet, "raw-device"),
    )
    channels = [ChannelProcess.start(agent) for agent in (shell, disabled)]
    # This one runs as the daemon does in production: `run` starts the channel's process itself.
    idle.start()
    try:
        for channel in channels:
            await channel.wait_connected()
        while "channel: connected" not in idle.log():
            assert idle.process is not None
            assert idle.process.poll() is None, idle.log()
            await asyncio.sleep(0.1)
        yield Devices(fleet, shell, channels[0], idle, disabled, raw, fleet.admin["authorization"].split()[1])
        assert channels[0].children() == [], "a shell was left behind"
        assert channels[0].open_ptys() == 0, "a PTY was left open"
    finally:
        for channel in channels:
            channel.stop()


def ws_url(fleet: Fleet, device_id: str, **query: int) -> str:
    base = fleet.server.management_url.replace("http://", "ws://")
    params = "&".join(f"{key}={value}" for key, value in query.items())
    return f"{base}/api/v1/devices/{device_id}/terminal" + (f"?{params}" if params else "")


class Operator:
    """The operator's WebSocket, as the console would use it."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.session = ""
        self.output = b""
        self.controls: list[dict[str, Any]] = []

    async def open(self) -> dict[str, Any]:
        first = json.loads(await self.connection.recv())
        if first["type"] == "opened":
            self.session = first["session"]
        return dict(first)

    async def type(self, text: str) -> None:
        await self.connection.send(encode_data(self.session, text.encode()))

    async def read_until(self, marker: bytes, within: float = 30) -> bytes:
        async with asyncio.timeout(within):
            while marker not in self.output:
                await self._next()
        return self.output

    async def read_line(self, line: str, within: float = 30) -> bytes:
        """Until the shell prints `line` as a line of its own (not the echo of the command typed)."""
        async with asyncio.timeout(within):
            while not printed(self.output.decode(errors="replace"), line):
                await self._next()
        return self.output

    async def control(self, kind: str, within: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for message in self.controls:
                    if message["type"] == kind:
                        self.controls.remove(message)
                        return message
                await self._next()

    async def _next(self) -> None:
        frame = await self.connection.recv()
        if isinstance(frame, bytes):
            decoded = decode_data(frame)
            assert decoded.session == self.session
            self.output += decoded.data
        else:
            self.controls.append(json.loads(frame))


def printed(output: str, line: str) -> bool:
    """`line` as a line of output: at the start of a line or after the prompt, whole. Input typed
    before the prompt shows comes back first as its echo, which this does not match."""
    return re.search(r"(?:^|\n|\$ )" + re.escape(line) + r"\r?\n", output) is not None


async def operator(fleet: Fleet, device_id: str, token: str, **query: int) -> Operator:
    connection = await connect(
        ws_url(fleet, device_id, **query), additional_headers={"Authorization": f"Bearer {token}"}
    )
    return Operator(connection)


async def test_a_shell_through_the_cli_echoes_applies_the_size_and_replays(devices: Devices) -> None:
    fleet = devices.fleet
    typed = "echo hello-from-device\nstty size\nid -un\nexit 7\n"
    result = await run_terminal(
        fleet.server.management_url,
        devices.token,
        devices.shell.device_id,
        typed,
        "--cols",
        "111",
        "--rows",
        "33",
    )
    assert printed(result.stdout, "hello-from-device"), result.stderr
    assert "33 111" in result.stdout
    assert printed(result.stdout, "nobody")  # the configured user, not root
    assert result.returncode == 7, result.stderr
    assert "session closed: exited" in result.stderr
    assert devices.shell_channel.children() == []

    opened = await fleet.audit("terminal.session_opened")
    closed = await fleet.audit("terminal.session_closed")
    assert opened[0]["object_id"] == devices.shell.device_id
    assert opened[0]["actor_name"] == "admin"
    assert opened[0]["actor_address"] == "127.0.0.1"
    session = closed[0]["details"]["session"]
    assert closed[0]["details"]["exit_status"] == 7
    assert closed[0]["details"]["bytes_in"] == len(typed)
    assert closed[0]["details"]["duration_seconds"] > 0

    replayed = await run_cli(
        "terminal",
        "replay",
        session,
        "--server",
        fleet.server.management_url,
        "--token",
        devices.token,
        "--speed",
        "0",
    )
    assert replayed.returncode == 0, replayed.stderr
    assert printed(replayed.stdout, "hello-from-device")
    assert "33 111" in replayed.stdout
    listed = await fleet.api.client.get(
        "/api/v1/terminal/sessions", params={"device_id": devices.shell.device_id}, headers=fleet.admin
    )
    assert listed.json()[0]["id"] == session
    assert listed.json()[0]["close_reason"] == "exited"


async def test_resize_reaches_the_shell(devices: Devices) -> None:
    me = await operator(devices.fleet, devices.shell.device_id, devices.token, cols=90, rows=30)
    assert (await me.open())["type"] == "opened"
    await me.type("stty size\n")
    await me.read_until(b"30 90")
    await me.connection.send(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
    await me.type("stty size\n")
    await me.read_until(b"43 132")
    await me.connection.send(json.dumps({"type": "close"}))
    closed = await me.control("closed")
    assert closed["reason"] == "operator_closed"
    await me.connection.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux runs the CLI on a real terminal")
async def test_on_a_real_terminal_the_cli_goes_raw_and_follows_window_resizes(
    devices: Devices, tmp_path: Path
) -> None:
    """The CLI in a tmux pane: the operator's tty in raw mode, a resize of the window reaches the
    device's PTY (SIGWINCH → resize), and the tty is restored at the end."""
    socket = f"fk-{os.getpid()}"
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "PATH": os.environ["PATH"], "TERM": "xterm"}
    command = " ".join(
        shlex.quote(part)
        for part in [
            "env",
            *(f"{key}={value}" for key, value in env.items()),
            *fleetkeeper_command(
                "terminal",
                devices.shell.device_id,
                "--server",
                devices.fleet.server.management_url,
                "--token",
                devices.token,
            ),
        ]
    )
    script = tmp_path / "cli.sh"
    script.write_text(
        f"{command}; echo cli-exit=$?; stty -a | grep -o -- '-icanon\\|icanon' | head -1; sleep 600\n"
    )

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", socket, *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    async def screen_shows(pattern: str) -> str:
        for _ in range(300):
            text = await asyncio.to_thread(tmux, "capture-pane", "-p", "-t", "cli", "-S", "-100")
            if re.search(pattern, text):
                return text
            await asyncio.sleep(0.1)
        raise AssertionError(f"{pattern!r} never showed:\n{text}")

    await asyncio.to_thread(
        tmux, "-f", "/dev/null", "new-session", "-d", "-s", "cli", "-x", "100", "-y", "30", f"sh {script}"
    )
    try:
        await asyncio.to_thread(tmux, "set-option", "-t", "cli", "status", "off")
        await screen_shows(r"(^|\n)\$")  # the prompt (capture-pane drops trailing spaces)
        await asyncio.to_thread(tmux, "send-keys", "-t", "cli", "stty size", "Enter")
        await screen_shows(r"\n30 100")
        await asyncio.to_thread(tmux, "resize-window", "-t", "cli", "-x", "120", "-y", "40")
        await asyncio.to_thread(tmux, "send-keys", "-t", "cli", "stty size", "Enter")
        await screen_shows(r"\n40 120")
        await asyncio.to_thread(tmux, "send-keys", "-t", "cli", "exit 3", "Enter")
        text = await screen_shows(r"cli-exit=3\s+-?icanon")
        assert "session closed: exited" in text
        assert re.search(r"cli-exit=3\s+icanon", text), text  # the tty is back in canonical mode
    finally:
        await asyncio.to_thread(tmux, "kill-server")


async def test_the_idle_timeout_closes_the_session(devices: Devices) -> None:
    fleet = devices.fleet
    # Types nothing: the session stays open until the device's idle timeout (2 s) ends it.
    result = await run_terminal(fleet.server.management_url, devices.token, devices.idle.device_id, "")
    assert "session closed: idle_timeout" in result.stderr, result.stderr
    closed = await fleet.audit("terminal.session_closed")
    assert closed[0]["object_id"] == devices.idle.device_id
    assert closed[0]["details"]["reason"] == "idle_timeout"


async def test_a_device_with_the_terminal_off_refuses_and_it_is_audited(devices: Devices) -> None:
    fleet = devices.fleet
    result = await run_terminal(
        fleet.server.management_url, devices.token, devices.disabled.device_id, "id\n"
    )
    assert result.returncode == 3
    assert "terminal_disabled" in result.stderr
    refused = await fleet.audit("terminal.session_refused")
    assert refused[0]["object_id"] == devices.disabled.device_id
    assert refused[0]["details"]["refusal"] == "terminal_disabled"


async def test_without_devices_connect_in_the_devices_group_the_operator_is_refused(devices: Devices) -> None:
    fleet = devices.fleet
    admin = fleet.admin
    for name, members in (("plant-1", [devices.shell.device_id]), ("plant-2", [])):
        created = await fleet.api.client.post("/api/v1/device-groups", json={"name": name}, headers=admin)
        assert created.status_code == 201, created.text
        if members:
            added = await fleet.api.client.post(
                f"/api/v1/device-groups/{name}/devices", json={"devices": members}, headers=admin
            )
            assert added.status_code in (200, 204), added.text
    elsewhere = await create_user(fleet, "tina", "troubleshooter", ["plant-2"])
    here = await create_user(fleet, "tom", "troubleshooter", ["plant-1"])
    reader = await create_user(fleet, "rita", "read-only", None)

    refused = await run_terminal(fleet.server.management_url, elsewhere, devices.shell.device_id, "id\n")
    # Outside its scope the device is not even visible: refused as not found, so ids cannot be probed.
    assert refused.returncode == 3, refused.stderr
    assert "device_not_found" in refused.stderr, refused.stderr
    denied = await fleet.audit("terminal.session_refused")
    assert denied[0]["outcome"] == "denied"
    assert denied[0]["actor_name"] == "tina"

    no_role = await run_terminal(fleet.server.management_url, reader, devices.shell.device_id, "id\n")
    assert no_role.returncode == 3, no_role.stderr
    assert "devices:connect" in no_role.stderr, no_role.stderr

    allowed = await run_terminal(
        fleet.server.management_url, here, devices.shell.device_id, "echo in-scope\nexit\n"
    )
    assert printed(allowed.stdout, "in-scope"), allowed.stderr
    # Recordings need audit:read.
    sessions = await fleet.api.client.get(
        "/api/v1/terminal/sessions", headers={"authorization": f"Bearer {here}"}
    )
    assert sessions.status_code == 403


async def create_user(fleet: Fleet, name: str, role: str, groups: list[str] | None) -> str:
    password = "tulip-orbit-canyon-7"
    created = await fleet.api.client.post(
        "/api/v1/users",
        json={
            "username": name,
            "password": password + "-x",
            "roles": [{"role": role, "device_groups": groups}],
        },
        headers=fleet.admin,
    )
    assert created.status_code == 201, created.text
    first = await fleet.api.sign_in(name, password + "-x")
    changed = await fleet.api.client.post(
        "/api/v1/me/password",
        json={"current_password": password + "-x", "new_password": password},
        headers={"authorization": f"Bearer {first['access_token']}"},
    )
    assert changed.status_code == 204, changed.text
    return str((await fleet.api.sign_in(name, password))["access_token"])


async def test_a_browser_sends_the_token_in_its_first_message(devices: Devices) -> None:
    connection = await connect(ws_url(devices.fleet, devices.shell.device_id))
    await connection.send(json.dumps({"type": "auth", "token": devices.token}))
    me = Operator(connection)
    assert (await me.open())["type"] == "opened"
    await me.type("echo via-first-message\nexit\n")
    await me.read_line("via-first-message")
    assert (await me.control("closed"))["reason"] == "exited"

    bad_header = await connect(
        ws_url(devices.fleet, devices.shell.device_id), additional_headers={"Authorization": "Bearer nope"}
    )
    error = json.loads(await bad_header.recv())
    assert error["code"] == "invalid_token"

    anonymous = await connect(ws_url(devices.fleet, devices.shell.device_id))
    await anonymous.send(json.dumps({"type": "auth", "token": "not-a-token"}))
    error = json.loads(await anonymous.recv())
    assert error["type"] == "error"
    assert error["code"] == "invalid_token"


async def test_sessions_per_device_are_limited_by_the_server_and_by_the_device(devices: Devices) -> None:
    fleet = devices.fleet
    first = await operator(fleet, devices.shell.device_id, devices.token)
    second = await operator(fleet, devices.shell.device_id, devices.token)
    assert (await first.open())["type"] == "opened"
    assert (await second.open())["type"] == "opened"
    third = await operator(fleet, devices.shell.device_id, devices.token)
    refused = await third.open()  # the server's limit: 2 in this module
    assert refused["type"] == "error"
    assert refused["code"] == "too_many_sessions"
    for session in (first, second):
        await session.connection.send(json.dumps({"type": "close"}))
        assert (await session.control("closed"))["reason"] == "operator_closed"

    only = await operator(fleet, devices.idle.device_id, devices.token)
    assert (await only.open())["type"] == "opened"
    another = await operator(fleet, devices.idle.device_id, devices.token)
    refused = await another.open()  # the device's own limit: max_sessions = 1
    assert refused["type"] == "refused"
    assert refused["code"] == "too_many_sessions"
    await only.connection.send(json.dumps({"type": "close"}))
    assert (await only.control("closed"))["reason"] == "operator_closed"


# --- file transfer ------------------------------------------------------------------------------


async def test_files_round_trip_within_the_roots_and_nothing_else(devices: Devices) -> None:
    fleet, device = devices.fleet, devices.shell.device_id
    client, admin = fleet.api.client, fleet.admin
    files = devices.shell.root / "files"
    files.mkdir(exist_ok=True)
    url = f"/api/v1/devices/{device}/files"
    payload = os.urandom(300_000)

    put = await client.put(url, params={"path": str(files / "blob.bin")}, content=payload, headers=admin)
    assert put.status_code == 201, put.text
    assert put.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (files / "blob.bin").read_bytes() == payload
    got = await client.get(url, params={"path": str(files / "blob.bin")}, headers=admin)
    assert got.status_code == 200, got.text
    assert got.content == payload

    (files / "escape").symlink_to("/etc")
    for path in ("/etc/hostname", str(files / ".." / "outside.txt"), str(files / "escape" / "hostname")):
        refused_get = await client.get(url, params={"path": path}, headers=admin)
        assert refused_get.status_code == 403, refused_get.text
        assert refused_get.json()["code"] == "path_not_allowed"
        refused_put = await client.put(url, params={"path": path}, content=b"x", headers=admin)
        assert refused_put.json()["code"] == "path_not_allowed", refused_put.text
    assert not (files.parent / "outside.txt").exists()

    too_big = os.urandom(1024 * 1024 + 1)  # the device's max_file_bytes is 1 MiB
    over = await client.put(url, params={"path": str(files / "big.bin")}, content=too_big, headers=admin)
    assert over.status_code == 413, over.text
    assert over.json()["code"] == "file_too_large", over.text
    (files / "big.bin").write_bytes(too_big)
    over = await client.get(url, params={"path": str(files / "big.bin")}, headers=admin)
    assert over.status_code == 413, over.text
    assert over.json()["code"] == "file_too_large", over.text
    missing = await client.get(url, params={"path": str(files / "nothing")}, headers=admin)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    relative = await client.get(url, params={"path": "etc/passwd"}, headers=admin)
    assert relative.json()["code"] == "invalid_path"
    assert sorted(path.name for path in files.iterdir()) == ["big.bin", "blob.bin", "escape"]  # no .part left

    uploaded = await fleet.audit("terminal.file_uploaded")
    assert [record["outcome"] for record in uploaded][-1] == "success"
    assert uploaded[-1]["details"]["size"] == len(payload)
    assert uploaded[-1]["details"]["path"] == str(files / "blob.bin")
    assert any(record["details"]["reason"] == "path_not_allowed" for record in uploaded)
    downloaded = await fleet.audit("terminal.file_downloaded")
    assert any(record["outcome"] == "success" for record in downloaded)

    # The CLI, both ways.
    source = devices.shell.root / "local.txt"
    source.write_text("from the operator\n")
    server = fleet.server.management_url
    sent = await run_cli(
        "terminal",
        "put",
        device,
        str(source),
        str(files / "note.txt"),
        "--server",
        server,
        "--token",
        devices.token,
    )
    assert sent.returncode == 0, sent.stderr
    back = devices.shell.root / "back.txt"
    received = await run_cli(
        "terminal",
        "get",
        device,
        str(files / "note.txt"),
        str(back),
        "--server",
        server,
        "--token",
        devices.token,
    )
    assert received.returncode == 0, received.stderr
    assert back.read_text() == "from the operator\n"


# --- bad input ----------------------------------------------------------------------------------


async def test_malformed_operator_frames_get_an_error_and_the_session_goes_on(devices: Devices) -> None:
    me = await operator(devices.fleet, devices.shell.device_id, devices.token)
    assert (await me.open())["type"] == "opened"
    other_session = "term_" + "0" * 26
    for frame, code in (
        ("not json", "malformed_frame"),
        ('{"type": "bogus"}', "unknown_type"),
        ('{"type": "resize", "cols": 0, "rows": 5}', "malformed_frame"),
        ('{"no": "type"}', "malformed_frame"),
        (b"", "malformed_frame"),
        (b"\xff\x00", "malformed_frame"),
        (encode_data(other_session, b"id\n"), "session_not_yours"),
    ):
        await me.connection.send(frame)
        error = await me.control("error")
        assert error["code"] == code, (frame, error)
    await me.type("echo still-alive\nexit\n")
    await me.read_line("still-alive")
    assert (await me.control("closed"))["reason"] == "exited"


async def test_a_session_of_another_user_cannot_be_written_to(devices: Devices) -> None:
    other_token = await create_user(devices.fleet, "otto", "troubleshooter", None)
    mine = await operator(devices.fleet, devices.shell.device_id, devices.token)
    theirs = await operator(devices.fleet, devices.shell.device_id, other_token)
    assert (await mine.open())["type"] == "opened"
    assert (await theirs.open())["type"] == "opened"
    await theirs.connection.send(encode_data(mine.session, b"echo injected-by-otto\n"))
    assert (await theirs.control("error"))["code"] == "session_not_yours"
    await mine.type("echo mine-only\nexit\n")
    output = await mine.read_line("mine-only")
    assert b"injected" not in output
    await theirs.connection.send(json.dumps({"type": "close"}))
    assert (await theirs.control("closed"))["reason"] == "operator_closed"


async def test_an_input_flood_ends_the_session_with_a_reason_and_leaves_nothing_behind(
    devices: Devices,
) -> None:
    me = await operator(devices.fleet, devices.shell.device_id, devices.token)
    assert (await me.open())["type"] == "opened"
    await me.type("sleep 600\n")  # the shell reads nothing while this runs
    block = b"x" * 65536
    closed: dict[str, Any] | None = None
    for _ in range(64):  # 4 MiB
        try:
            await me.connection.send(encode_data(me.session, block))
        except Exception:
            break
    closed = await me.control("closed", within=60)
    assert closed["reason"] in ("input_flood", "device_overloaded"), closed
    # When the server dropped the session (device_overloaded) it told the operator first, and the
    # device ends the shell as it gets the close: wait for that, boundedly.
    for _ in range(100):
        if not devices.shell_channel.children():
            break
        await asyncio.sleep(0.1)
    assert devices.shell_channel.children() == []
    assert devices.shell_channel.open_ptys() == 0
    # The device goes on serving.
    again = await run_terminal(
        devices.fleet.server.management_url,
        devices.token,
        devices.shell.device_id,
        "echo after-flood\nexit\n",
    )
    assert printed(again.stdout, "after-flood"), again.stderr


async def test_jobs_the_shell_left_running_end_with_the_session(devices: Devices) -> None:
    me = await operator(devices.fleet, devices.shell.device_id, devices.token)
    assert (await me.open())["type"] == "opened"
    # A background job in a process group of its own, and one that outlives the shell.
    await me.type("sleep 3001 &\nsleep 3002 &\necho started-$((1+1))\n")
    await me.read_line("started-2")
    for _ in range(100):  # a job's fork may not have exec'd sleep yet
        if len(sleeping(b"3001") + sleeping(b"3002")) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(sleeping(b"3001") + sleeping(b"3002")) == 2
    await me.type("exit\n")
    assert (await me.control("closed"))["reason"] == "exited"
    assert sleeping(b"3001") + sleeping(b"3002") == []


def sleeping(seconds: bytes) -> list[int]:
    """Processes running `sleep SECONDS` (once reparented they are no longer the agent's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == b"sleep\x00" + seconds + b"\x00":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_malformed_device_frames_get_an_error_and_the_channel_goes_on(devices: Devices) -> None:
    fleet, agent = devices.fleet, devices.raw
    context = ssl.create_default_context(cafile=str(fleet.server.ca_cert))
    context.load_cert_chain(agent.data_dir / "device.crt", agent.data_dir / "device.key")
    url = fleet.server.device_url.replace("https://", "wss://") + "/device/v1/channel"
    async with connect(url, ssl=context) as device:
        unknown = "term_" + "1" * 26
        for frame, code in (
            ("garbage", "malformed_frame"),
            ('{"type": "launch_missiles"}', "unknown_type"),
            ('{"type": "opened"}', "malformed_frame"),
            (json.dumps({"type": "opened", "session": unknown}), "unknown_session"),
            (json.dumps({"type": "closed", "session": "../../etc", "reason": "x"}), "malformed_frame"),
            (b"\x05ab", "malformed_frame"),
            (encode_data(unknown, b"spoofed output"), "unknown_session"),
        ):
            await device.send(frame)
            error = json.loads(await device.recv())
            assert error == {"type": "error", "code": code, "message": error["message"]}, (frame, error)

        # Still a working channel: an operator's open arrives, and what the device sends reaches them.
        me = await operator(fleet, agent.device_id, devices.token)
        opening = json.loads(await device.recv())
        assert opening["type"] == "open"
        await device.send(json.dumps({"type": "opened", "session": opening["session"]}))
        assert (await me.open())["type"] == "opened"
        await device.send(encode_data(opening["session"], b"hello from a hand-made device"))
        await me.read_until(b"hand-made")
        await device.send(
            json.dumps(
                {"type": "closed", "session": opening["session"], "reason": "exited", "exit_status": 0}
            )
        )
        assert (await me.control("closed"))["reason"] == "exited"

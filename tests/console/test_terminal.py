"""A terminal on a real device from the console: xterm.js in Chromium, the terminal WebSocket
authenticated by the console cookie, a real agent's channel and PTY."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, expect
from websockets.sync.client import connect

from tests.conftest import ADMIN_PASSWORD, Api, RunningServer, start_server
from tests.console.conftest import new_console
from tests.e2e.fleet import Agent, Fleet, management_client
from tests.terminal.support import ChannelProcess, enrolled_agent

pytestmark = pytest.mark.timeout(300)


@dataclass
class TerminalDevice:
    fleet: Fleet
    agent: Agent
    channel: ChannelProcess


async def _enrolled_shell(server: RunningServer, workdir: Path) -> tuple[Fleet, Agent]:
    async with management_client(server) as client:
        assert server.admin_password
        fleet = Fleet(server, workdir, Api(client, None, server.admin_password))  # type: ignore[arg-type]
        await fleet.setup()
        return fleet, await enrolled_agent(fleet, "console-shell", max_sessions=2)


@pytest.fixture(scope="module")
def shell_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TerminalDevice]:
    workdir: Path = tmp_path_factory.mktemp("console-terminal")
    server = start_server(workdir / "server", timeout=120)
    try:
        # Playwright's sync API holds this thread's event loop: the async harness runs in another.
        with ThreadPoolExecutor(1) as pool:
            fleet, agent = pool.submit(asyncio.run, _enrolled_shell(server, workdir)).result()
        channel = ChannelProcess.start(agent)
        try:
            deadline = time.monotonic() + 30
            while "channel: connected" not in channel.log():
                assert channel.process.poll() is None, channel.log()
                assert time.monotonic() < deadline, channel.log()
                time.sleep(0.1)
            yield TerminalDevice(fleet, agent, channel)
        finally:
            channel.stop()
    finally:
        server.stop()


def test_open_a_terminal_and_run_a_command(browser: Browser, shell_device: TerminalDevice) -> None:
    console, context = new_console(browser, shell_device.fleet.server, "terminal")
    try:
        console.sign_in("admin", ADMIN_PASSWORD)
        expect(console.page.get_by_role("heading", name="Dashboard")).to_be_visible()
        page = console.go(f"/devices/{shell_device.agent.device_id}/terminal")
        expect(page.get_by_test_id("terminal-status")).to_contain_text("connected")
        page.locator(".xterm-helper-textarea").focus()
        page.keyboard.type("echo fleet$((6*7))\n")
        expect(page.locator(".xterm-rows")).to_contain_text("fleet42")
        console.shot("terminal")
        page.get_by_role("button", name="End session").click()
        expect(page.get_by_test_id("terminal-status")).to_contain_text("session closed")
        assert not console.console_errors, console.console_errors
    finally:
        context.close()


def test_the_cookie_opens_no_terminal_from_another_site(shell_device: TerminalDevice) -> None:
    """A console cookie sent with a WebSocket from another origin is refused (cross-site WebSocket
    hijacking); with this server's origin it works."""
    server = shell_device.fleet.server
    with httpx2.Client(base_url=server.management_url) as http:
        page = http.get("/sign-in")
        token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        signed = http.post(
            "/sign-in", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token}
        )
        assert signed.status_code == 303, signed.text
        cookie = f"fleetkeeper_console={http.cookies['fleetkeeper_console']}"
    url = server.management_url.replace("http://", "ws://") + (
        f"/api/v1/devices/{shell_device.agent.device_id}/terminal"
    )
    with connect(url, origin="https://evil.example", additional_headers={"Cookie": cookie}) as ws:  # type: ignore[arg-type]
        assert '"csrf_failed"' in str(ws.recv(timeout=10))
    with connect(url, origin=server.management_url, additional_headers={"Cookie": cookie}) as ws:  # type: ignore[arg-type]
        opened = ws.recv(timeout=10)
        assert '"opened"' in str(opened), opened
        ws.send('{"type": "close"}')

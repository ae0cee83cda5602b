"""File transfer on the device, through the channel's own frames: the path rules of `file_roots`, and
a local user who swaps a file or a directory for a symbolic link while a transfer is under way."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper_agent.channel import Channel
from fleetkeeper_agent.channel_protocol import decode_data
from fleetkeeper_agent.config import TerminalConfig

FINAL = ("file_end", "file_error")


class Operator:
    """The server's end of the channel: it sends what a test asks, keeps what the device answers, and
    runs a test's hook at the moment the device sends a given answer (where a local user races it)."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.answers: list[dict[str, Any]] = []
        self.received: dict[str, bytearray] = {}
        self.when_device_sends: dict[str, Callable[[], None]] = {}
        self.serving: asyncio.Task[None] | None = None

    async def send(self, frame: str | bytes) -> None:  # the device's frames
        if isinstance(frame, bytes):
            decoded = decode_data(frame)
            assert decoded is not None
            self.received.setdefault(decoded[0], bytearray()).extend(decoded[1])
            return
        answer = json.loads(frame)
        self.answers.append(answer)
        hook = self.when_device_sends.pop(answer["type"], None)
        if hook is not None:
            hook()

    def __aiter__(self) -> Operator:
        return self

    async def __anext__(self) -> str | bytes:
        frame = await self.incoming.get()
        if frame is None:
            raise StopAsyncIteration
        return frame

    async def request(self, message: dict[str, Any]) -> None:
        await self.incoming.put(json.dumps(message))

    async def answer(self, session: str, types: tuple[str, ...]) -> dict[str, Any]:
        """The device's first answer of one of `types` for `session`; the channel's own error if it died."""
        for _ in range(2000):
            for answer in self.answers:
                if answer.get("session") == session and answer["type"] in types:
                    return answer
            assert self.serving is not None
            if self.serving.done():
                self.serving.result()  # raises what ended the channel
                raise AssertionError(f"the channel ended without answering {session}")
            await asyncio.sleep(0.005)
        raise AssertionError(f"no {types} for {session}: {self.answers}")

    async def get(self, path: Path | str, session: str = "get") -> tuple[dict[str, Any], bytes]:
        await self.request({"type": "file_get", "session": session, "path": str(path)})
        answer = await self.answer(session, FINAL)
        return answer, bytes(self.received.get(session, b""))

    async def put(self, path: Path | str, data: bytes, session: str = "put") -> dict[str, Any]:
        await self.request({"type": "file_put", "session": session, "path": str(path), "size": len(data)})
        ready = await self.answer(session, ("file_ready", "file_error"))
        if ready["type"] == "file_error":
            return ready
        await self.incoming.put(bytes([len(session)]) + session.encode() + data)
        await self.request({"type": "file_end", "session": session, "size": len(data)})
        return await self.answer(session, FINAL)


@asynccontextmanager
async def channel_to(*roots: Path) -> AsyncIterator[Operator]:
    operator = Operator()
    config = TerminalConfig(file_roots=roots)
    operator.serving = asyncio.create_task(Channel(operator, config).serve())  # type: ignore[arg-type]
    try:
        yield operator
    finally:
        await operator.incoming.put(None)
        await operator.serving


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """`root` (the only file root) holding `report.txt` and `logs/app.log`; `outside` beside it holds what a
    transfer must never reach."""
    root = tmp_path / "root"
    (root / "logs").mkdir(parents=True)
    (root / "incoming").mkdir()
    (root / "report.txt").write_bytes(b"public report\n")
    (root / "logs" / "app.log").write_bytes(b"public log\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"root-only secret\n")
    (outside / "app.log").write_bytes(b"root-only log\n")
    return tmp_path


# --- races with a local user --------------------------------------------------------------------


async def test_a_file_swapped_for_a_link_once_the_download_is_accepted_is_not_followed(tree: Path) -> None:
    root, secret = tree / "root", tree / "outside" / "secret.txt"

    def swap() -> None:
        (root / "report.txt").unlink()
        (root / "report.txt").symlink_to(secret)

    async with channel_to(root) as operator:
        operator.when_device_sends["file_start"] = swap
        answer, received = await operator.get(root / "report.txt")
    assert b"secret" not in received
    assert answer["type"] == "file_end", answer
    assert received == b"public report\n"


async def test_a_directory_swapped_for_a_link_once_the_download_is_accepted_is_not_followed(
    tree: Path,
) -> None:
    root = tree / "root"

    def swap() -> None:
        (root / "logs").rename(root / "logs.old")
        (root / "logs").symlink_to(tree / "outside")

    async with channel_to(root) as operator:
        operator.when_device_sends["file_start"] = swap
        answer, received = await operator.get(root / "logs" / "app.log")
    assert b"root-only" not in received
    assert answer["type"] == "file_end", answer
    assert received == b"public log\n"


async def test_an_upload_whose_directory_becomes_a_link_lands_in_the_directory_checked(tree: Path) -> None:
    root, outside = tree / "root", tree / "outside"

    def swap() -> None:
        (root / "incoming").rename(root / "incoming.old")
        (root / "incoming").symlink_to(outside)

    async with channel_to(root) as operator:
        operator.when_device_sends["file_ready"] = swap
        answer = await operator.put(root / "incoming" / "new.txt", b"from the operator\n")
    assert answer["type"] == "file_end", answer
    assert sorted(os.listdir(outside)) == ["app.log", "secret.txt"]
    assert (root / "incoming.old" / "new.txt").read_bytes() == b"from the operator\n"
    assert os.listdir(root / "incoming.old") == ["new.txt"]  # no temporary file left


# --- links below the root are refused, whatever they point at -----------------------------------


async def test_links_below_the_root_are_refused_even_when_they_point_inside(tree: Path) -> None:
    root = tree / "root"
    (root / "logs-link").symlink_to(root / "logs")
    (root / "report-link").symlink_to(root / "report.txt")
    async with channel_to(root) as operator:
        for number, path in enumerate((root / "logs-link" / "app.log", root / "report-link")):
            answer, received = await operator.get(path, session=f"get{number}")
            assert (answer["type"], answer["code"]) == ("file_error", "path_not_allowed"), answer
            assert "symbolic link" in answer["message"]
            assert received == b""
        through = await operator.put(root / "logs-link" / "new.txt", b"x", session="put1")
        assert (through["type"], through["code"]) == ("file_error", "path_not_allowed"), through
        onto = await operator.put(root / "report-link", b"x", session="put2")
        assert (onto["type"], onto["code"]) == ("file_error", "path_not_allowed"), onto
    assert sorted(os.listdir(root / "logs")) == ["app.log"]
    assert (root / "report-link").is_symlink()
    assert (root / "report.txt").read_bytes() == b"public report\n"


async def test_paths_outside_the_roots_or_spelled_to_leave_them_are_refused(tree: Path) -> None:
    root = tree / "root"
    (root / "outside-link").symlink_to(tree / "outside")
    refused = (
        root / ".." / "outside" / "secret.txt",
        root / "logs" / ".." / "report.txt",
        root / "outside-link" / "secret.txt",
        "/etc/passwd",
        "relative/path",
        str(root) + "\x00/report.txt",
        tree / "rootless",  # a sibling whose name starts like the root's
    )
    async with channel_to(root) as operator:
        for number, path in enumerate(refused):
            answer, received = await operator.get(path, session=f"get{number}")
            assert (answer["type"], answer["code"]) == ("file_error", "path_not_allowed"), (path, answer)
            assert received == b""
            answer = await operator.put(path, b"x", session=f"put{number}")
            assert (answer["type"], answer["code"]) == ("file_error", "path_not_allowed"), (path, answer)
    assert sorted(os.listdir(tree / "outside")) == ["app.log", "secret.txt"]
    assert not (tree / "rootless").exists()


async def test_what_is_not_a_regular_file_is_refused_and_the_rest_goes_through(tree: Path) -> None:
    root = tree / "root"
    os.mkfifo(root / "pipe")
    async with channel_to(root) as operator:
        answer, _ = await operator.get(root, session="root")
        assert answer["code"] == "is_a_directory", answer
        answer, _ = await operator.get(root / "logs", session="dir")
        assert answer["code"] == "is_a_directory", answer
        answer, _ = await operator.get(root / "missing" / "file", session="missing")
        assert answer["code"] == "not_found", answer
        answer, _ = await operator.get(root / "pipe", session="pipe")  # opening a FIFO must not block
        assert answer["code"] == "path_not_allowed", answer
        assert (await operator.put(root / "logs", b"x", session="put-dir"))["code"] == "is_a_directory"
        assert (await operator.put(root / "new" / "x", b"x", session="put-missing"))["code"] == "not_found"

        answer = await operator.put(root / "." / "logs" / "new.log", b"a new log\n", session="put")
        assert answer["type"] == "file_end", answer
        answer, received = await operator.get(f"{root}//logs/./new.log", session="back")
        assert answer["type"] == "file_end", answer
        assert received == b"a new log\n"
    assert sorted(os.listdir(root / "logs")) == ["app.log", "new.log"]


async def test_a_root_configured_through_a_link_is_reached_by_either_spelling(tree: Path) -> None:
    (tree / "root-link").symlink_to(tree / "root")  # the device owner's choice, followed as configured
    async with channel_to(tree / "root-link") as operator:
        for number, root in enumerate((tree / "root-link", tree / "root")):
            answer, received = await operator.get(root / "logs" / "app.log", session=f"get{number}")
            assert answer["type"] == "file_end", answer
            assert received == b"public log\n"


async def test_without_file_roots_transfers_are_off(tree: Path) -> None:
    async with channel_to() as operator:
        answer, _ = await operator.get(tree / "root" / "report.txt")
        assert answer["code"] == "files_disabled", answer

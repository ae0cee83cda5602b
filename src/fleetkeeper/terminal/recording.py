"""Session recordings as asciicast v2: a JSON header line, then one `[seconds, "o", text]` line per
output chunk (and `[seconds, "r", "COLSxROWS"]` per resize). Kept in memory up to a bound while the
session runs and written to the object store when it ends."""

from __future__ import annotations

import codecs
import hashlib
import json
import time
from collections.abc import AsyncIterator

from fleetkeeper.core.objectstore import ObjectStore


class Recording:
    def __init__(self, cols: int, rows: int, *, max_bytes: int, title: str) -> None:
        self._started = time.monotonic()
        self._header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(time.time()),
            "title": title,
            "env": {"TERM": "xterm-256color"},
        }
        self._events: list[str] = []
        self._size = 0
        self._max_bytes = max_bytes
        self.truncated = False
        # Output arrives in chunks that may split a UTF-8 character.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _add(self, kind: str, text: str) -> None:
        if self.truncated or not text:
            return
        line = json.dumps([round(time.monotonic() - self._started, 6), kind, text])
        if self._size + len(line) > self._max_bytes:
            self.truncated = True
            line = json.dumps(
                [round(time.monotonic() - self._started, 6), "o", "\r\n[recording truncated]\r\n"]
            )
        self._events.append(line)
        self._size += len(line) + 1

    def output(self, data: bytes) -> None:
        self._add("o", self._decoder.decode(data))

    def resize(self, cols: int, rows: int) -> None:
        self._add("r", f"{cols}x{rows}")

    def to_bytes(self) -> bytes:
        lines = [json.dumps(self._header), *self._events]
        return ("\n".join(lines) + "\n").encode()

    async def save(self, store: ObjectStore, key: str) -> None:
        content = self.to_bytes()

        async def chunks() -> AsyncIterator[bytes]:
            yield content

        await store.put(key, chunks(), length=len(content), sha256=hashlib.sha256(content).hexdigest())

"""What a test compares of an API answer."""

from __future__ import annotations

from typing import Any

import httpx2


def answer(response: httpx2.Response) -> tuple[int, dict[str, Any]]:
    body = response.json()
    body.pop("request_id", None)
    return response.status_code, body

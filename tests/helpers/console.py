"""The console in process, signed in as someone through its sign-in form."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2

from tests.conftest import Api, api_for
from tests.helpers.users import PASSWORD


@asynccontextmanager
async def console_as(api: Api, username: str) -> AsyncIterator[httpx2.AsyncClient]:
    """A console session of `username`, signed in through the sign-in form."""
    async with api_for(api.runtime) as own:
        form = await own.client.get("/sign-in")
        signed_in = await own.client.post(
            "/sign-in",
            data={
                "username": username,
                "password": PASSWORD,
                "csrf_token": csrf_token(form.text),
                "next": "/",
            },
        )
        assert signed_in.status_code == 303, signed_in.text
        yield own.client


def csrf_of(page: httpx2.Response) -> str:
    return csrf_token(page.text)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)

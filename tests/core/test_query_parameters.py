"""The management API refuses query parameters an operation does not take (core/queries.py)."""

from __future__ import annotations

import pytest

from tests.conftest import Api


@pytest.mark.parametrize("query", ["limt=5", "=null", "cursor=&=", "status=pending"])
async def test_an_unknown_query_parameter_is_refused(api: Api, query: str) -> None:
    headers = await api.admin_headers()
    refused = await api.client.get(f"/api/v1/releases?{query}", headers=headers)
    assert refused.status_code == 422
    assert refused.json()["code"] == "validation_failed"
    assert [error["location"][0] for error in refused.json()["errors"]] == ["query"]


async def test_the_parameters_an_operation_takes_are_taken(api: Api) -> None:
    headers = await api.admin_headers()
    assert (await api.client.get("/api/v1/releases?limit=5&cursor=", headers=headers)).status_code == 200
    # A parameter of a dependency (the audit list's filters) counts as the operation's own.
    listed = await api.client.get("/api/v1/audit/records?since=2026-01-01T00:00:00Z", headers=headers)
    assert listed.status_code == 200

"""The audit log over the API: audit:read only, filters, export, and the chain's verification."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import text

from tests.conftest import Api


async def test_records_need_audit_read(api: Api) -> None:
    reader = await api.create_user("reader", "tulip-orbit-canyon-7", roles=[{"role": "read-only"}])
    assert (await api.client.get("/api/v1/audit/records", headers=reader)).status_code == 403
    assert (await api.client.get("/api/v1/audit/export", headers=reader)).status_code == 403
    assert (await api.client.get("/api/v1/audit/verification", headers=reader)).status_code == 403


async def test_filter_page_and_export(api: Api) -> None:
    admin = await api.admin_headers()
    await api.create_user("jane", "tulip-orbit-canyon-7")
    await api.client.post("/api/v1/auth/sign-in", json={"username": "jane", "password": "wrong-wrong-wrong"})

    created = await api.client.get("/api/v1/audit/records", params={"action": "user.created"}, headers=admin)
    assert created.status_code == 200
    usernames = [item["details"]["username"] for item in created.json()["items"]]
    assert usernames == ["jane", "admin"], "newest first"

    failures = (
        await api.client.get(
            "/api/v1/audit/records", params={"action": "auth.*", "outcome": "failure"}, headers=admin
        )
    ).json()["items"]
    assert [item["actor_name"] for item in failures] == ["jane"]
    assert failures[0]["actor_address"] == "203.0.113.7"

    first = (await api.client.get("/api/v1/audit/records", params={"limit": 2}, headers=admin)).json()
    second = (
        await api.client.get(
            "/api/v1/audit/records", params={"limit": 2, "cursor": first["next_cursor"]}, headers=admin
        )
    ).json()
    assert first["items"][-1]["seq"] > second["items"][0]["seq"]
    bad_cursor = await api.client.get("/api/v1/audit/records", params={"cursor": "nonsense"}, headers=admin)
    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["code"] == "invalid_cursor"
    naive = await api.client.get(
        "/api/v1/audit/records", params={"since": "2026-01-01T00:00:00"}, headers=admin
    )
    assert naive.status_code == 422

    jsonl = await api.client.get(
        "/api/v1/audit/export", params={"format": "jsonl", "actor": "jane"}, headers=admin
    )
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert {line["action"] for line in lines} >= {"auth.sign_in", "user.password_changed"}
    exported = await api.client.get("/api/v1/audit/export", params={"format": "csv"}, headers=admin)
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert rows[0]["action"] == "user.created"
    assert "attachment" in exported.headers["content-disposition"]
    exports = (
        await api.client.get("/api/v1/audit/records", params={"action": "audit.exported"}, headers=admin)
    ).json()
    assert len(exports["items"]) == 2, "reading the log out is itself on record"


async def test_verification_names_a_tampered_record(api: Api) -> None:
    admin = await api.admin_headers()
    intact = (await api.client.get("/api/v1/audit/verification", headers=admin)).json()
    assert intact["ok"] is True
    assert intact["checked"] >= 3
    async with api.runtime.database.transaction() as session:
        await session.execute(text("UPDATE audit_records SET actor_name = 'mallory' WHERE seq = 2"))
    broken = (await api.client.get("/api/v1/audit/verification", headers=admin)).json()
    assert broken["ok"] is False
    assert broken["bad_seq"] == 2
    assert "altered" in broken["reason"]

"""Carrying a deployment further (resume, advance, finish) needs the release's tags in the caller's
releases:read, as creating it does, and answers the same 404 as reading the release; stopping it
(pause, abort) stays open to whoever may change the deployment. A refusal to finish a live
deployment names its group only to a caller who sees it (issue 18, findings 3 and 4)."""

from __future__ import annotations

from typing import Any

import httpx2

from tests.conftest import Api
from tests.deployments.test_create_scope import tagged_release
from tests.helpers.deployments import add_devices
from tests.helpers.responses import answer
from tests.helpers.users import PASSWORD

PHASES = [{"size": {"count": 1}, "advance": "manual"}, {"size": {"percent": 100}}]


async def deployed(api: Api, admin: dict[str, str], target: dict[str, Any], **body: Any) -> str:
    created = await api.client.post(
        "/api/v1/deployments",
        json={"name": "rollout", "release": "fw-beta", "version": "1.0", "target": target, **body},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    deployment_id: str = created.json()["id"]
    return deployment_id


async def act(api: Api, headers: dict[str, str], deployment_id: str, action: str) -> httpx2.Response:
    return await api.client.post(f"/api/v1/deployments/{deployment_id}/{action}", headers=headers)


async def stable_only(api: Api) -> dict[str, str]:
    return await api.create_user(
        "stable-only",
        PASSWORD,
        roles=[{"role": "deployments-manager", "device_groups": ["plant-3"], "release_tags": ["stable"]}],
    )


async def test_resuming_or_advancing_needs_the_release_in_my_tags_and_stopping_does_not(api: Api) -> None:
    await tagged_release(api, "fw-beta", "1.0", ["beta"])
    await add_devices(api.runtime.database, 3, group="plant-3")
    admin = await api.admin_headers()
    deployment_id = await deployed(api, admin, {"group": "plant-3"}, phases=PHASES)
    deployer = await stable_only(api)
    read = await api.client.get("/api/v1/releases/fw-beta/1.0", headers=deployer)
    assert read.status_code == 404

    assert (await act(api, deployer, deployment_id, "pause")).status_code == 200
    for action in ("resume", "advance"):
        refused = await act(api, deployer, deployment_id, action)
        assert answer(refused) == answer(read), f"{action}: the same 404 as reading the release"
    shown = (await api.client.get(f"/api/v1/deployments/{deployment_id}", headers=admin)).json()
    assert (shown["status"], shown["current_phase"]) == ("paused", 1), "nothing changed"

    assert (await act(api, admin, deployment_id, "resume")).status_code == 200
    assert (await act(api, deployer, deployment_id, "abort")).status_code == 200


async def test_finishing_a_live_deployment_needs_the_release_in_my_tags(api: Api) -> None:
    await tagged_release(api, "fw-beta", "1.0", ["beta"])
    await add_devices(api.runtime.database, 1, group="plant-3")
    admin = await api.admin_headers()
    deployment_id = await deployed(api, admin, {"group": "plant-3", "live": True})
    deployer = await stable_only(api)
    read = await api.client.get("/api/v1/releases/fw-beta/1.0", headers=deployer)
    refused = await act(api, deployer, deployment_id, "finish")
    assert answer(refused) == answer(read)
    assert (await act(api, admin, deployment_id, "finish")).status_code == 200

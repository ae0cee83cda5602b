"""Creating a deployment: checked request, set-based fan-out into phases, devices:deploy on every
target device."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from fleetkeeper.audit.models import AuditRecord
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.deployments.plans import Phase, Size, phase_boundaries
from fleetkeeper.deployments.progress import phase_counts
from fleetkeeper.deployments.rollout import create
from tests.conftest import Api
from tests.helpers.deployments import add_devices, admin, devices_of, request, scoped
from tests.helpers.releases import a_release


def test_phase_boundaries() -> None:
    phases = [
        Phase(Size(count=10), "auto", 100),
        Phase(Size(percent=20), "auto", 100),
        Phase(Size(percent=5), "auto", 100),
    ]
    assert phase_boundaries(phases, 1000) == [10, 210, 1000]
    assert phase_boundaries(phases, 3) == [3, 3, 3]
    assert phase_boundaries([Phase(Size(percent=1), "auto", 100)] * 2, 50) == [1, 50]


async def test_fan_out_into_phases(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 1000, group="fleet")
    deployment = await create(
        api.runtime,
        admin(api),
        request(
            phases=[
                {"size": {"count": 10}},
                {"size": {"percent": 20}, "advance": "manual"},
                {"size": {"percent": 100}},
            ]
        ),
    )
    counts = await phase_counts(api.runtime, deployment.id)
    assert {phase: sum(statuses.values()) for phase, statuses in counts.items()} == {0: 10, 1: 200, 2: 790}
    assert all(set(statuses) == {"pending"} for statuses in counts.values())
    assert deployment.status == "active"
    async with api.runtime.database.session() as session:
        audit = await session.scalar(select(AuditRecord).where(AuditRecord.action == "deployment.created"))
    assert audit is not None
    assert audit.details_object()["devices"] == 1000


async def test_phases_take_the_devices_in_id_order(api: Api) -> None:
    """The fan-out cuts the target in id order at the phase boundaries: the same devices land in
    the same phases every time, devices outside the target are skipped, and a phase whose
    boundary is already reached stays empty."""
    await a_release(api)
    ids = sorted(await add_devices(api.runtime.database, 25, group="fleet"))
    await add_devices(api.runtime.database, 7, group="elsewhere")  # interleaved ids, not targeted
    phases = [
        {"size": {"count": 3}},
        {"size": {"percent": 40}},
        {"size": {"count": 100}},  # reaches the total: the phases after it are empty
        {"size": {"count": 1}},
        {"size": {"percent": 100}},
    ]
    first = await create(api.runtime, admin(api), request(phases=phases))
    second = await create(api.runtime, admin(api), request(phases=phases))
    assigned = {}
    for deployment_id in (first.id, second.id):
        found = await devices_of(api, deployment_id)
        assigned[deployment_id] = {device_id: phase for device_id, (phase, _status) in found.items()}
    expected = {device_id: 0 if rank < 3 else 1 if rank < 13 else 2 for rank, device_id in enumerate(ids)}
    assert assigned[first.id] == expected
    assert assigned[second.id] == expected


async def test_one_device_outside_the_scope_refuses_the_whole_request(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 5, group="plant-a")
    outsider = await add_devices(api.runtime.database, 1, group="plant-b")
    await add_devices(api.runtime.database, 0, group="fleet")
    mine = await create(api.runtime, scoped(["plant-a"]), request(target={"group": "plant-a"}))
    assert mine.id
    with pytest.raises(ProblemError) as refused:
        await create(
            api.runtime,
            scoped(["plant-a"]),
            request(
                target={"devices": [*outsider, *await add_devices(api.runtime.database, 2, group="plant-a")]}
            ),
        )
    assert refused.value.status == 403
    assert "plant-b" in refused.value.detail
    assert refused.value.extra["groups"] == ["plant-b"]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"target": {"group": "empty"}}, "empty_target"),
        ({"target": {"devices": []}}, "empty_target"),
        ({"target": {"devices": ["dev_nope"]}}, "device_not_found"),
        ({"target": {"group": "x", "devices": []}}, "invalid_target"),
        ({"phases": [{"size": {"percent": 0}}]}, "invalid_phases"),
        ({"phases": [{"size": {"percent": 10, "count": 1}}]}, "invalid_phases"),
        ({"phases": [{"size": {"count": 1}, "advance": "sometimes"}]}, "invalid_phases"),
        ({"phases": [{"size": {"count": 1}}] * 11}, "invalid_phases"),
        ({"failure_threshold": {"phase": {"percent": 101}}}, "invalid_threshold"),
        ({"failure_threshold": {"everything": {"count": 1}}}, "invalid_threshold"),
        ({"windows": [{"cron": "61 * * * *", "duration_minutes": 60, "timezone": "UTC"}]}, "invalid_window"),
        (
            {"windows": [{"cron": "0 2 * * *", "duration_minutes": 60, "timezone": "UTC"}] * 2},
            "invalid_window",
        ),
        ({"release_version": "9.9"}, "release_not_found"),
    ],
)
async def test_bad_requests_are_clear_and_create_nothing(
    api: Api, changes: dict[str, Any], code: str
) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 3, group="fleet")
    await add_devices(api.runtime.database, 0, group="empty")
    with pytest.raises(ProblemError) as refused:
        await create(api.runtime, admin(api), request(**changes))
    assert refused.value.code == code
    assert 400 <= refused.value.status < 500
    async with api.runtime.database.session() as session:
        from fleetkeeper.deployments.models import Deployment

        assert (await session.scalars(select(Deployment))).all() == []


async def test_a_release_for_other_device_types_is_refused(api: Api) -> None:
    await a_release(api)
    await add_devices(api.runtime.database, 2, group="fleet")
    await add_devices(api.runtime.database, 1, device_type="x86-gateway", group="fleet")
    with pytest.raises(ProblemError) as refused:
        await create(api.runtime, admin(api), request())
    assert refused.value.code == "incompatible_device_type"
    assert "x86-gateway" in refused.value.detail

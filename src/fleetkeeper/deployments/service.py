"""The deployments domain: creating a rollout for a whole fleet in a few set-based statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, case, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.audit.service import record
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ForbiddenError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.runtime import Runtime
from fleetkeeper.deployments.models import Deployment, DeploymentDevice
from fleetkeeper.deployments.plans import (
    Target,
    parse_failure_threshold,
    parse_phases,
    parse_target,
    phase_boundaries,
)
from fleetkeeper.deployments.windows import parse_windows
from fleetkeeper.devices import service as devices
from fleetkeeper.devices.models import Device
from fleetkeeper.releases.models import Release


@dataclass(frozen=True)
class DeploymentRequest:
    name: str
    release_name: str
    release_version: str
    target: Any
    phases: Any = None
    failure_threshold: Any = None
    windows: Any = None
    start_at: datetime | None = None
    max_retries: int = 0
    force: bool = False
    max_downloading: int | None = None


async def _target_condition(session: AsyncSession, target: Target) -> ColumnElement[bool]:
    """The accepted devices the target names."""
    if target.devices is not None:
        known = await session.scalar(
            select(func.count()).select_from(Device).where(Device.id.in_(target.devices))
        )
        if known != len(target.devices):
            raise NotFoundError("the target names devices that do not exist", code="device_not_found")
        condition: ColumnElement[bool] = Device.id.in_(target.devices)
    else:
        assert target.group is not None
        condition = devices.group_condition(await devices.get_group(session, target.group))
    return condition & (Device.status == "accepted")


async def _release(session: AsyncSession, name: str, version: str) -> Release:
    release: Release | None = await session.scalar(
        select(Release).where(Release.name == name, Release.version == version, Release.deleted_at.is_(None))
    )
    if release is None:
        raise NotFoundError(f"no release {name} {version}", code="release_not_found")
    return release


async def _ensure_may_deploy_to_all(
    session: AsyncSession, principal: Principal, target: ColumnElement[bool]
) -> None:
    """devices:deploy for every device targeted: one outside the caller's scope refuses the whole
    request, naming the group it is in."""
    if principal.grants.scopes(Permission.DEVICES_DEPLOY) is None:
        return
    allowed = await devices.scope_condition(session, principal, Permission.DEVICES_DEPLOY)
    outside = await session.scalar(select(Device.id).where(target, ~allowed).order_by(Device.id).limit(1))
    if outside is None:
        return
    groups = sorted(await devices.device_group_names(session, outside))
    raise ForbiddenError(
        f"the target includes devices outside your scope, such as {outside} "
        f"(in {', '.join(groups) if groups else 'no group'}): devices:deploy is needed on all of them",
        permission=Permission.DEVICES_DEPLOY.value,
        groups=groups,
    )


async def create(runtime: Runtime, principal: Principal, request: DeploymentRequest) -> Deployment:
    """Checks everything, then fans out with one INSERT … SELECT: each targeted device gets its
    phase from its rank, never through a Python loop over devices."""
    phases = parse_phases(request.phases)
    threshold = parse_failure_threshold(request.failure_threshold)
    parse_windows(request.windows)  # validated now; evaluated when devices check in
    target = parse_target(request.target)
    if not request.name.strip() or len(request.name) > 200:
        raise ProblemError(
            "a deployment needs a name of at most 200 characters", code="invalid_request", status=422
        )
    if not 0 <= request.max_retries <= 10:
        raise ProblemError("max_retries is 0-10", code="invalid_request", status=422)
    if request.max_downloading is not None and request.max_downloading < 1:
        raise ProblemError("max_downloading is at least 1", code="invalid_request", status=422)
    if request.start_at is not None and request.start_at.tzinfo is None:
        raise ProblemError("start_at needs a time zone", code="invalid_request", status=422)
    async with runtime.database.transaction() as session:
        release = await _release(session, request.release_name, request.release_version)
        condition = await _target_condition(session, target)
        total = int(await session.scalar(select(func.count()).select_from(Device).where(condition)) or 0)
        if total == 0:
            raise ProblemError("the target has no accepted device", code="empty_target", status=422)
        incompatible = await session.scalar(
            select(Device.device_type)
            .where(condition, Device.device_type.not_in(release.device_types))
            .limit(1)
        )
        if incompatible is not None:
            raise ProblemError(
                f"{release.name} {release.version} is for {', '.join(release.device_types)}; "
                f"the target includes {incompatible} devices",
                code="incompatible_device_type",
                status=422,
            )
        await _ensure_may_deploy_to_all(session, principal, condition)
        now = utcnow()
        deployment = Deployment(
            id=new_id("dep"),
            name=request.name.strip(),
            release_id=release.id,
            status="scheduled" if request.start_at and request.start_at > now else "active",
            target={"devices": target.devices}
            if target.devices is not None
            else {"group": target.group, "live": target.live},
            phases=[
                {
                    "size": {k: v for k, v in vars(p.size).items() if v is not None},
                    "advance": p.advance,
                    "success_percent": p.success_percent,
                }
                for p in phases
            ],
            current_phase=0,
            failure_threshold=request.failure_threshold or {},
            windows=request.windows or [],
            start_at=request.start_at,
            max_retries=request.max_retries,
            force=request.force,
            max_downloading=request.max_downloading,
            created_by=principal.user_id,
            created_at=now,
        )
        session.add(deployment)
        await session.flush()
        boundaries = phase_boundaries(phases, total)
        rank = func.row_number().over(order_by=Device.id)
        ranked = select(Device.id.label("device_id"), rank.label("rank")).where(condition).subquery()
        phase_of = case(
            *(
                (ranked.c.rank <= boundary, literal(index, Integer))
                for index, boundary in enumerate(boundaries)
            ),
            else_=literal(len(boundaries) - 1, Integer),
        )
        await session.execute(
            insert(DeploymentDevice).from_select(
                ["deployment_id", "device_id", "phase", "status", "attempts", "last_seq"],
                select(
                    literal(deployment.id),
                    ranked.c.device_id,
                    phase_of,
                    literal("pending"),
                    literal(0),
                    literal(0),
                ),
            )
        )
        await record(
            session,
            actor=principal.actor,
            action="deployment.created",
            object_type="deployment",
            object_id=deployment.id,
            details={
                "name": deployment.name,
                "release": f"{release.name} {release.version}",
                "target": deployment.target,
                "devices": total,
                "phases": boundaries,
                "failure_threshold": bool(threshold.phase or threshold.overall),
            },
        )
    return deployment


async def phase_counts(runtime: Runtime, deployment_id: str) -> dict[int, dict[str, int]]:
    """Devices per phase and status."""
    async with runtime.database.session() as session:
        rows = await session.execute(
            select(DeploymentDevice.phase, DeploymentDevice.status, func.count())
            .where(DeploymentDevice.deployment_id == deployment_id)
            .group_by(DeploymentDevice.phase, DeploymentDevice.status)
        )
        counts: dict[int, dict[str, int]] = {}
        for phase, status, count in rows:
            counts.setdefault(phase, {})[status] = count
        return counts

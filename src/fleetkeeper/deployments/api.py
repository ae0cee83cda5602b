"""Routes of deployments: operators on the management listener, devices on the device listener."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from fleetkeeper.access.auth import requires
from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.core.wire import RequestBody, Timestamp
from fleetkeeper.deployments import (
    lifecycle,
    listing,
    live,
    reports,
    rollout,
    statistics,
    visibility,
    webhooks,
)
from fleetkeeper.deployments.context import deployments_context
from fleetkeeper.deployments.director import assignment
from fleetkeeper.deployments.models import Deployment, DeploymentDevice
from fleetkeeper.devices.auth import AuthenticatedDevice

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
device_router = APIRouter(prefix="/device/v1/deployments", tags=["device"])
Deployer = Annotated[Principal, requires(Permission.DEVICES_DEPLOY)]
Reader = Annotated[Principal, requires(Permission.DEVICES_READ)]


class CreateDeployment(RequestBody):
    name: str = Field(min_length=1, max_length=200)
    release: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    target: dict[str, Any]
    phases: list[dict[str, Any]] | None = Field(default=None, max_length=10)
    failure_threshold: dict[str, Any] | None = None
    windows: list[dict[str, Any]] | None = Field(default=None, max_length=20)
    start_at: Timestamp | None = None
    max_retries: int = Field(default=0, ge=0, le=10)
    force: bool = False
    max_downloading: int | None = Field(default=None, ge=1)


class ProgressOut(BaseModel):
    counts: dict[str, int] = Field(description="devices per status")
    total: int
    succeeded: int = Field(description="success and already_installed")
    failed: int = Field(description="failure and refused")
    in_progress: int = Field(description="downloading, downloaded, deferred, installing, rebooting")
    pending: int
    aborted: int
    percent_done: float = Field(description="devices in a final status, in percent of the total")

    @classmethod
    def of(cls, progress: statistics.Progress) -> ProgressOut:
        return cls(**vars(progress))


class PhaseProgressOut(ProgressOut):
    phase: int = Field(description="from 1")
    open: bool = Field(description="its devices are told to install (the current phase or an earlier one)")


class StatisticsOut(BaseModel):
    overall: ProgressOut
    phases: list[PhaseProgressOut]


class DeploymentOut(BaseModel):
    id: str
    name: str
    release_id: str
    status: str
    target: dict[str, Any]
    phases: list[dict[str, Any]]
    current_phase: int
    failure_threshold: dict[str, Any]
    windows: list[dict[str, Any]]
    max_retries: int
    force: bool
    max_downloading: int | None
    pause_reason: str | None
    created_at: datetime
    start_at: datetime | None = Field(description="the scheduled start, if one was given")
    started_at: datetime | None = Field(description="when devices could first install; none before")
    finished_at: datetime | None
    progress: dict[str, dict[str, int]] = {}
    waiting_for_devices: bool | None = Field(
        default=None, description="live: every device so far is done, more may join"
    )
    statistics: StatisticsOut | None = None

    @classmethod
    def of_view(cls, view: visibility.DeploymentView) -> DeploymentOut:
        """As the reader sees it: their part of the target; numbers only if all of it is theirs."""
        return cls.of(view.deployment, view.counts).model_copy(update={"target": view.target})

    @classmethod
    def of(cls, deployment: Deployment, progress: dict[int, dict[str, int]] | None = None) -> DeploymentOut:
        numbers_out = None
        if progress is not None:
            numbers = statistics.statistics(deployment, progress)
            numbers_out = StatisticsOut(
                overall=ProgressOut.of(numbers.overall),
                phases=[
                    PhaseProgressOut(**vars(phase), phase=index + 1, open=index <= deployment.current_phase)
                    for index, phase in enumerate(numbers.phases)
                ],
            )
        return cls(
            id=deployment.id,
            name=deployment.name,
            release_id=deployment.release_id,
            status=deployment.status,
            target=deployment.target,
            phases=deployment.phases,
            current_phase=deployment.current_phase + 1,
            failure_threshold=deployment.failure_threshold,
            windows=deployment.windows,
            max_retries=deployment.max_retries,
            force=deployment.force,
            max_downloading=deployment.max_downloading,
            pause_reason=deployment.pause_reason,
            created_at=deployment.created_at,
            start_at=deployment.start_at,
            started_at=statistics.started_at(deployment),
            finished_at=deployment.finished_at,
            progress={str(phase + 1): counts for phase, counts in sorted((progress or {}).items())},
            waiting_for_devices=None if progress is None else live.waiting_for_devices(deployment, progress),
            statistics=numbers_out,
        )


@router.post("", status_code=201)
async def create(body: CreateDeployment, principal: Deployer, request: Request) -> DeploymentOut:
    """A rollout of a release to a list of devices or a group, in phases (docs/deployments.md)."""
    runtime = deployments_context(request)
    deployment = await rollout.create(
        runtime,
        principal,
        rollout.DeploymentRequest(
            name=body.name,
            release_name=body.release,
            release_version=body.version,
            target=body.target,
            phases=body.phases,
            failure_threshold=body.failure_threshold,
            windows=body.windows,
            start_at=body.start_at,
            max_retries=body.max_retries,
            force=body.force,
            max_downloading=body.max_downloading,
        ),
    )
    return DeploymentOut.of_view(await visibility.view_after_change(runtime, principal, deployment))


@router.get("")
async def list_deployments(principal: Reader, request: Request) -> list[DeploymentOut]:
    """The newest deployments that reach the caller's groups (docs/deployments.md, "Who sees what")."""
    async with deployments_context(request).database.session() as session:
        views = await visibility.newest(session, principal)
    return [DeploymentOut.of_view(view) for view in views]


@router.get("/{deployment_id}")
async def get(deployment_id: str, principal: Reader, request: Request) -> DeploymentOut:
    """The deployment with its statistics, per phase and overall (read from its counters); to a
    reader of part of its target, their part and no numbers."""
    async with deployments_context(request).database.session() as session:
        view = await visibility.view(session, principal, deployment_id)
    return DeploymentOut.of_view(view)


class DeploymentDeviceOut(BaseModel):
    device_id: str
    phase: int = Field(description="from 1")
    status: str
    attempts: int
    last_seq: int
    detail: str | None = Field(description="the end of the device's last report (a log tail, a reason)")
    updated_at: datetime | None

    @classmethod
    def of(cls, entry: DeploymentDevice) -> DeploymentDeviceOut:
        return cls(
            device_id=entry.device_id,
            phase=entry.phase + 1,
            status=entry.status,
            attempts=entry.attempts,
            last_seq=entry.last_seq,
            detail=entry.detail,
            updated_at=entry.updated_at,
        )


class DeploymentDevicesPage(BaseModel):
    items: list[DeploymentDeviceOut]
    next_cursor: str | None


@router.get("/{deployment_id}/devices")
async def list_devices(
    deployment_id: str,
    principal: Reader,
    request: Request,
    status: Annotated[str | None, Query(max_length=20)] = None,
    phase: Annotated[int | None, Query(ge=1, le=10)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> DeploymentDevicesPage:
    """The deployment's devices the caller may read, by status then device id, filtered by status
    and phase; pass `next_cursor` back as `cursor` for the next page."""
    async with deployments_context(request).database.session() as session:
        page = await listing.list_devices(
            session,
            principal,
            deployment_id,
            status=status,
            phase=phase - 1 if phase is not None else None,
            limit=limit,
            cursor=cursor,
        )
    return DeploymentDevicesPage(
        items=[DeploymentDeviceOut.of(entry) for entry in page.items], next_cursor=page.next_cursor
    )


class EventOut(BaseModel):
    seq: int
    status: str = Field(description="as the device reported it")
    detail: str | None
    at: datetime


class DeviceHistoryOut(DeploymentDeviceOut):
    deployment_id: str
    events: list[EventOut]


@router.get("/{deployment_id}/devices/{device_id}")
async def device_history(
    deployment_id: str, device_id: str, principal: Reader, request: Request
) -> DeviceHistoryOut:
    """One device in the deployment: where it stands and every report it made, oldest first."""
    async with deployments_context(request).database.session() as session:
        entry, events = await listing.device_history(session, principal, deployment_id, device_id)
    return DeviceHistoryOut(
        **DeploymentDeviceOut.of(entry).model_dump(),
        deployment_id=deployment_id,
        events=[
            EventOut(seq=event.seq, status=event.status, detail=event.detail, at=event.created_at)
            for event in events
        ],
    )


device_deployments_router = APIRouter(prefix="/api/v1/devices", tags=["deployments"])


class DeviceDeploymentOut(BaseModel):
    deployment_id: str
    name: str
    release_id: str
    deployment_status: str
    created_at: datetime
    finished_at: datetime | None
    device: DeploymentDeviceOut = Field(description="where this device stands in it")


class DeviceDeploymentsPage(BaseModel):
    items: list[DeviceDeploymentOut]
    next_cursor: str | None


@device_deployments_router.get("/{device_id}/deployments")
async def deployments_of_device(
    device_id: str,
    principal: Reader,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> DeviceDeploymentsPage:
    """The deployments this device is part of, newest first, with its status in each."""
    async with deployments_context(request).database.session() as session:
        page = await listing.deployments_of_device(session, principal, device_id, limit=limit, cursor=cursor)
    return DeviceDeploymentsPage(
        items=[
            DeviceDeploymentOut(
                deployment_id=deployment.id,
                name=deployment.name,
                release_id=deployment.release_id,
                deployment_status=deployment.status,
                created_at=deployment.created_at,
                finished_at=deployment.finished_at,
                device=DeploymentDeviceOut.of(entry),
            )
            for deployment, entry in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.post("/{deployment_id}/finish")
async def finish(deployment_id: str, principal: Deployer, request: Request) -> DeploymentOut:
    """Ends a live deployment: it stops following its group and finishes once its devices are done."""
    runtime = deployments_context(request)
    deployment = await live.finish(runtime, principal, deployment_id)
    return DeploymentOut.of_view(await visibility.view_after_change(runtime, principal, deployment))


@router.post("/{deployment_id}/{action}")
async def change(
    deployment_id: str,
    action: Literal["pause", "resume", "abort", "advance"],
    principal: Deployer,
    request: Request,
) -> DeploymentOut:
    """Pause, resume, abort (devices not yet done stop; those done stay), or open the next phase."""
    runtime = deployments_context(request)
    deployment = await lifecycle.change_state(runtime, principal, deployment_id, action)
    return DeploymentOut.of_view(await visibility.view_after_change(runtime, principal, deployment))


webhook_router = APIRouter(prefix="/api/v1/webhooks", tags=["deployments"])
WebhookAdmin = Annotated[Principal, requires(Permission.USERS_MANAGE)]


class CreateWebhook(RequestBody):
    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=10)
    description: str = Field(default="", max_length=200)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str
    created_at: datetime


class CreatedWebhook(BaseModel):
    webhook: WebhookOut
    secret: str = Field(description="signs every delivery (X-Fleetkeeper-Signature); shown only here")


def _webhook_out(webhook: Any) -> WebhookOut:
    return WebhookOut(
        id=webhook.id,
        url=webhook.url,
        events=webhook.events,
        description=webhook.description,
        created_at=webhook.created_at,
    )


@webhook_router.post("", status_code=201)
async def create_webhook(body: CreateWebhook, principal: WebhookAdmin, request: Request) -> CreatedWebhook:
    """An endpoint that receives deployment events, HMAC-signed (docs/deployments.md)."""
    runtime = deployments_context(request)
    webhook, secret = await webhooks.create_webhook(
        runtime.database,
        principal.actor,
        url=body.url,
        events=body.events,
        description=body.description,
        allow_private=runtime.settings.webhook_allow_private_targets,
    )
    return CreatedWebhook(webhook=_webhook_out(webhook), secret=secret)


@webhook_router.get("")
async def list_webhooks(principal: WebhookAdmin, request: Request) -> list[WebhookOut]:
    async with deployments_context(request).database.session() as session:
        return [_webhook_out(webhook) for webhook in await webhooks.list_webhooks(session)]


@webhook_router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, principal: WebhookAdmin, request: Request) -> Response:
    await webhooks.delete_webhook(deployments_context(request).database, principal.actor, webhook_id)
    return Response(status_code=204)


class CurrentDeployment(BaseModel):
    deployment_id: str
    release: str
    version: str
    target_path: str
    release_counter: int
    install_allowed: bool = Field(description="outside the maintenance windows: download, but do not install")
    next_window: datetime | None
    queued: bool = Field(
        default=False,
        description="the deployment's download slots (max_downloading) are taken: nothing is assigned "
        "from it yet (the director lists nothing); check in again later",
    )
    force: bool = Field(default=False, description="install even if this release is installed already")


@device_router.get("/current")
async def current(device: AuthenticatedDevice, request: Request) -> CurrentDeployment:
    """The deployment the director metadata stands for: what to report progress against."""
    async with deployments_context(request).database.session() as session:
        found = await assignment.current_assignment(session, device.id)
    if found is None:
        raise NotFoundError("nothing to install now", code="no_deployment")
    deployment, release = found.deployment, found.release
    allowed, next_window = assignment.install_window(deployment)
    return CurrentDeployment(
        install_allowed=allowed,
        next_window=next_window,
        queued=found.queued,
        force=deployment.force,
        deployment_id=deployment.id,
        release=release.name,
        version=release.version,
        target_path=release.target_path,
        release_counter=release.release_counter,
    )


class StatusReport(RequestBody):
    status: str = Field(max_length=20)
    seq: int = Field(ge=1)
    detail: str | None = Field(default=None, max_length=16_384, description="a log tail, a reason")


class StatusAnswer(BaseModel):
    status: str
    seq: int


@device_router.post("/{deployment_id}/status")
async def report(
    deployment_id: str, body: StatusReport, device: AuthenticatedDevice, request: Request
) -> StatusAnswer:
    """Progress of this device on a deployment; idempotent, ordered by `seq`."""
    entry = await reports.report(
        deployments_context(request),
        device,
        deployment_id,
        status=body.status,
        seq=body.seq,
        detail=body.detail,
    )
    return StatusAnswer(status=entry.status, seq=entry.last_seq)

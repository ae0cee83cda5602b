"""Routes of deployments: operators on the management listener, devices on the device listener."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleetkeeper.access.auth import requires
from fleetkeeper.access.service import Permission, Principal
from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.core.runtime import runtime_of
from fleetkeeper.deployments import live, service, webhooks
from fleetkeeper.deployments.models import Deployment
from fleetkeeper.devices.auth import AuthenticatedDevice

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
device_router = APIRouter(prefix="/device/v1/deployments", tags=["device"])
Deployer = Annotated[Principal, requires(Permission.DEVICES_DEPLOY)]
Reader = Annotated[Principal, requires(Permission.DEVICES_READ)]


class CreateDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    release: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    target: dict[str, Any]
    phases: list[dict[str, Any]] | None = Field(default=None, max_length=10)
    failure_threshold: dict[str, Any] | None = None
    windows: list[dict[str, Any]] | None = Field(default=None, max_length=20)
    start_at: AwareDatetime | None = None
    max_retries: int = Field(default=0, ge=0, le=10)
    force: bool = False
    max_downloading: int | None = Field(default=None, ge=1)


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
    pause_reason: str | None
    created_at: datetime
    finished_at: datetime | None
    progress: dict[str, dict[str, int]] = {}
    waiting_for_devices: bool | None = Field(
        default=None, description="live: every device so far is done, more may join (null in lists)"
    )

    @classmethod
    def of(cls, deployment: Deployment, progress: dict[int, dict[str, int]] | None = None) -> DeploymentOut:
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
            pause_reason=deployment.pause_reason,
            created_at=deployment.created_at,
            finished_at=deployment.finished_at,
            progress={str(phase + 1): counts for phase, counts in sorted((progress or {}).items())},
            waiting_for_devices=None if progress is None else live.waiting_for_devices(deployment, progress),
        )


@router.post("", status_code=201)
async def create(body: CreateDeployment, principal: Deployer, request: Request) -> DeploymentOut:
    """A rollout of a release to a list of devices or a group, in phases (docs/deployments.md)."""
    runtime = runtime_of(request)
    deployment = await service.create(
        runtime,
        principal,
        service.DeploymentRequest(
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
    return DeploymentOut.of(deployment, await service.phase_counts(runtime, deployment.id))


@router.get("")
async def list_deployments(principal: Reader, request: Request) -> list[DeploymentOut]:
    async with runtime_of(request).database.session() as session:
        rows = (
            await session.scalars(select(Deployment).order_by(Deployment.created_at.desc()).limit(200))
        ).all()
    return [DeploymentOut.of(row) for row in rows]


@router.get("/{deployment_id}")
async def get(deployment_id: str, principal: Reader, request: Request) -> DeploymentOut:
    """The deployment with its devices per phase and status."""
    runtime = runtime_of(request)
    async with runtime.database.session() as session:
        deployment = await service.get(session, deployment_id)
    return DeploymentOut.of(deployment, await service.phase_counts(runtime, deployment_id))


@router.post("/{deployment_id}/finish")
async def finish(deployment_id: str, principal: Deployer, request: Request) -> DeploymentOut:
    """Ends a live deployment: it stops following its group and finishes once its devices are done."""
    runtime = runtime_of(request)
    deployment = await live.finish(runtime, principal, deployment_id)
    return DeploymentOut.of(deployment, await service.phase_counts(runtime, deployment_id))


@router.post("/{deployment_id}/{action}")
async def change(
    deployment_id: str,
    action: Literal["pause", "resume", "abort", "advance"],
    principal: Deployer,
    request: Request,
) -> DeploymentOut:
    """Pause, resume, abort (devices not yet done stop; those done stay), or open the next phase."""
    runtime = runtime_of(request)
    deployment = await service.change_state(runtime, principal, deployment_id, action)
    return DeploymentOut.of(deployment, await service.phase_counts(runtime, deployment_id))


webhook_router = APIRouter(prefix="/api/v1/webhooks", tags=["deployments"])
WebhookAdmin = Annotated[Principal, requires(Permission.USERS_MANAGE)]


class CreateWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
    runtime = runtime_of(request)
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
    async with runtime_of(request).database.session() as session:
        return [_webhook_out(webhook) for webhook in await webhooks.list_webhooks(session)]


@webhook_router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, principal: WebhookAdmin, request: Request) -> Response:
    await webhooks.delete_webhook(runtime_of(request).database, principal.actor, webhook_id)
    return Response(status_code=204)


class CurrentDeployment(BaseModel):
    deployment_id: str
    release: str
    version: str
    target_path: str
    release_counter: int
    install_allowed: bool = Field(description="outside the maintenance windows: download, but do not install")
    next_window: datetime | None


@device_router.get("/current")
async def current(device: AuthenticatedDevice, request: Request) -> CurrentDeployment:
    """The deployment the director metadata stands for: what to report progress against."""
    async with runtime_of(request).database.session() as session:
        found = await service.assignment_for(session, device.id)
    if found is None:
        raise NotFoundError("nothing to install now", code="no_deployment")
    deployment, release = found
    allowed, next_window = service.install_window(deployment)
    return CurrentDeployment(
        install_allowed=allowed,
        next_window=next_window,
        deployment_id=deployment.id,
        release=release.name,
        version=release.version,
        target_path=release.target_path,
        release_counter=release.release_counter,
    )


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
    entry = await service.report(
        runtime_of(request), device, deployment_id, status=body.status, seq=body.seq, detail=body.detail
    )
    return StatusAnswer(status=entry.status, seq=entry.last_seq)

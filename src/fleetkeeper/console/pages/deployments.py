"""Deployments: the list, the create form, and a deployment's live progress with its controls."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.console.context import console_context
from fleetkeeper.console.render import is_htmx, render
from fleetkeeper.console.session import page
from fleetkeeper.core.errors import ProblemError
from fleetkeeper.deployments import lifecycle, listing, rollout, visibility
from fleetkeeper.deployments.plans import MAX_PHASES
from fleetkeeper.devices import service as devices
from fleetkeeper.releases import service as releases

router = APIRouter(include_in_schema=False)
Reader = Annotated[Principal, page(Permission.DEVICES_READ)]
Deployer = Annotated[Principal, page(Permission.DEVICES_DEPLOY)]
DEVICES_PER_PAGE = 25
DevicesPerPage = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=1000)]
RELEASES_OFFERED = 500
# Which part of the form a problem is shown next to, by its code.
FIELD_OF_CODE = {
    "release_not_found": "release",
    "invalid_target": "target",
    "empty_target": "target",
    "group_not_found": "target",
    "device_not_found": "target",
    "incompatible_device_type": "target",
    "forbidden": "target",  # devices outside the deployer's groups
    "invalid_phases": "phases",
    "invalid_threshold": "threshold",
    "invalid_window": "windows",
}
ENDED = ("finished", "aborted")


def _text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _texts(form: FormData, name: str) -> list[str]:
    return [value.strip() if isinstance(value, str) else "" for value in form.getlist(name)]


def _number(value: str, what: str, code: str = "invalid_request") -> int:
    try:
        return int(value)
    except ValueError:
        raise ProblemError(f"{what} must be a whole number", code=code, status=422) from None


def _size(kind: str, value: str, what: str, code: str) -> dict[str, int]:
    return {"count" if kind == "count" else "percent": _number(value, what, code)}


@dataclass
class DeploymentForm:
    """The create form as typed: rows of phases and windows, and every field, to show it again."""

    values: dict[str, str] = field(default_factory=dict)
    phases: list[dict[str, str]] = field(default_factory=list)
    windows: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, form: FormData) -> DeploymentForm:
        names = [
            "name",
            "release",
            "target_kind",
            "group",
            "devices",
            "live",
            "threshold_phase_kind",
            "threshold_phase",
            "threshold_overall_kind",
            "threshold_overall",
            "start_at",
            "max_retries",
            "max_downloading",
            "force",
        ]
        phases = [
            {"kind": kind, "size": size, "advance": advance, "success": success}
            for kind, size, advance, success in zip(
                _texts(form, "phase_kind"),
                _texts(form, "phase_size"),
                _texts(form, "phase_advance"),
                _texts(form, "phase_success"),
                strict=False,
            )
            if size
        ]
        windows = [
            {"cron": cron, "duration": duration, "timezone": zone}
            for cron, duration, zone in zip(
                _texts(form, "window_cron"),
                _texts(form, "window_duration"),
                _texts(form, "window_timezone"),
                strict=False,
            )
            if cron or duration
        ]
        return cls({name: _text(form, name) for name in names}, phases, windows)

    def rows(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The rows to show: those typed, and empty ones to add more."""
        blank_phase = {"kind": "percent", "size": "", "advance": "auto", "success": "100"}
        blank_window = {"cron": "", "duration": "", "timezone": "UTC"}
        phases = self.phases + [dict(blank_phase)] * max(1, 3 - len(self.phases))
        windows = self.windows + [dict(blank_window)] * max(1, 2 - len(self.windows))
        return phases[:MAX_PHASES], windows

    def request(self) -> rollout.DeploymentRequest:
        """What the API's create route passes to the service, which checks it the same way."""
        v = self.values
        release_name, _, release_version = v.get("release", "").partition(" ")
        if not release_name or not release_version:
            raise ProblemError("choose a release", code="release_not_found", status=422)
        if v.get("target_kind") == "devices":
            target: dict[str, Any] = {"devices": v.get("devices", "").replace(",", " ").split()}
        else:
            target = {"group": v.get("group", ""), "live": v.get("live") == "on"}
        threshold: dict[str, Any] = {}
        for scope in ("phase", "overall"):
            if v.get(f"threshold_{scope}"):
                threshold[scope] = _size(
                    v.get(f"threshold_{scope}_kind", "percent"),
                    v[f"threshold_{scope}"],
                    f"the {scope} failure threshold",
                    "invalid_threshold",
                )
        phases = [
            {
                "size": _size(row["kind"], row["size"], f"phase {index} size", "invalid_phases"),
                "advance": row["advance"],
                "success_percent": _number(
                    row["success"] or "100", f"phase {index} success percent", "invalid_phases"
                ),
            }
            for index, row in enumerate(self.phases, start=1)
        ]
        windows = [
            {
                "cron": row["cron"],
                "duration_minutes": _number(row["duration"], "a window's duration", "invalid_window"),
                "timezone": row["timezone"] or "UTC",
            }
            for row in self.windows
        ]
        start_at = None
        if v.get("start_at"):
            try:
                start_at = datetime.fromisoformat(v["start_at"]).replace(tzinfo=UTC)
            except ValueError:
                raise ProblemError(
                    "the start is not a date and time", code="invalid_request", status=422
                ) from None
        return rollout.DeploymentRequest(
            name=v.get("name", ""),
            release_name=release_name,
            release_version=release_version,
            target=target,
            phases=phases or None,
            failure_threshold=threshold or None,
            windows=windows or None,
            start_at=start_at,
            max_retries=_number(v.get("max_retries") or "0", "retries"),
            force=v.get("force") == "on",
            max_downloading=_number(v["max_downloading"], "the download cap")
            if v.get("max_downloading")
            else None,
        )


@router.get("/deployments")
async def deployments(request: Request, principal: Reader) -> Response:
    async with console_context(request).database.session() as session:
        views = await visibility.newest(session, principal)
        release_ids = [view.deployment.release_id for view in views]
        by_id = await releases.releases_by_id(session, principal, release_ids)
    # A deployment whose target is only partly the reader's shows no numbers (visibility.py).
    items = [
        (view.deployment, by_id.get(view.deployment.release_id), view.statistics and view.statistics.overall)
        for view in views
    ]
    return render(request, "deployments/list.html", principal, items=items)


async def _form_page(
    request: Request, principal: Principal, form: DeploymentForm, problem: ProblemError | None = None
) -> Response:
    async with console_context(request).database.session() as session:
        offered = await releases.list_releases(
            session, principal, name=None, limit=RELEASES_OFFERED, after=None
        )
        groups = await devices.visible_groups(session, principal)
    phase_rows, window_rows = form.rows()
    return render(
        request,
        "deployments/new.html",
        principal,
        status=problem.status if problem else 200,
        form=form.values,
        phase_rows=phase_rows,
        window_rows=window_rows,
        releases=offered,
        groups=groups,
        problem=problem,
        problem_field=FIELD_OF_CODE.get(problem.code, "") if problem else "",
    )


@router.get("/deployments/new")
async def new_deployment(request: Request, principal: Deployer) -> Response:
    form = DeploymentForm({"target_kind": "group", "max_retries": "0"})
    return await _form_page(request, principal, form)


@router.post("/deployments/new")
async def create_deployment(request: Request, principal: Deployer) -> Response:
    form = DeploymentForm.read(await request.form())
    try:
        deployment = await rollout.create(console_context(request), principal, form.request())
    except ProblemError as problem:
        return await _form_page(request, principal, form, problem)
    return RedirectResponse(f"/deployments/{deployment.id}", status_code=303)


def _page_query(cursor: str | None, per_page: int) -> str:
    query = {"cursor": cursor} if cursor else {}
    if per_page != DEVICES_PER_PAGE:
        query["per_page"] = str(per_page)
    return "?" + urlencode(query) if query else ""


async def _live_context(
    request: Request, principal: Principal, deployment_id: str, cursor: str | None, per_page: int
) -> dict[str, Any]:
    async with console_context(request).database.session() as session:
        view = await visibility.view(session, principal, deployment_id)
        deployment = view.deployment
        listed = await listing.list_devices(session, principal, deployment_id, limit=per_page, cursor=cursor)
        events = await listing.recent_events(session, principal, deployment_id)
        release = (await releases.releases_by_id(session, principal, [deployment.release_id])).get(
            deployment.release_id
        )
    return {
        "deployment": deployment,
        "target": view.target,
        "release": release,
        "numbers": view.statistics,  # None: part of the target is not the reader's (visibility.py)
        "devices": listed.items,
        # The query of this page of devices, and of the first and next ones, kept while polling.
        "page_query": _page_query(cursor, per_page),
        "first_query": _page_query(None, per_page) if cursor else None,
        "next_query": _page_query(listed.next_cursor, per_page) if listed.next_cursor else None,
        "events": events,
        "ended": deployment.status in ENDED,
    }


@router.get("/deployments/{deployment_id}")
async def deployment(
    request: Request,
    principal: Reader,
    deployment_id: str,
    cursor: Cursor = None,
    per_page: DevicesPerPage = DEVICES_PER_PAGE,
) -> Response:
    context = await _live_context(request, principal, deployment_id, cursor, per_page)
    return render(request, "deployments/detail.html", principal, **context)


@router.get("/deployments/{deployment_id}/live")
async def live(
    request: Request,
    principal: Reader,
    deployment_id: str,
    cursor: Cursor = None,
    per_page: DevicesPerPage = DEVICES_PER_PAGE,
) -> Response:
    """The part of the detail page that htmx refreshes every 2 s while the deployment runs."""
    context = await _live_context(request, principal, deployment_id, cursor, per_page)
    return render(request, "deployments/live.html", principal, **context)


@router.post("/deployments/{deployment_id}/{action}")
async def change(
    request: Request,
    principal: Deployer,
    deployment_id: str,
    action: Literal["pause", "resume", "abort", "advance"],
) -> Response:
    await lifecycle.change_state(console_context(request), principal, deployment_id, action)
    if not is_htmx(request):
        return RedirectResponse(f"/deployments/{deployment_id}", status_code=303)
    context = await _live_context(request, principal, deployment_id, None, DEVICES_PER_PAGE)
    return render(request, "deployments/live.html", principal, **context)

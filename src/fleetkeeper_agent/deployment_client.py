"""The deployments part of the device API (docs/device-api.md, "Deployments"): what to report
against, the reports themselves, and security events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fleetkeeper_agent.client import DeviceClient
from fleetkeeper_agent.errors import AgentError, ServerError
from fleetkeeper_agent.update_state import Report

CURRENT_PATH = "/device/v1/deployments/current"
EVENTS_PATH = "/device/v1/events"


@dataclass(frozen=True)
class CurrentDeployment:
    deployment_id: str
    target_path: str
    release_counter: int
    install_allowed: bool
    next_window: str | None
    force: bool


def current_deployment(client: DeviceClient) -> CurrentDeployment | None:
    try:
        body = client.call("GET", CURRENT_PATH).body
    except ServerError as exc:
        if exc.code == "no_deployment":
            return None
        raise
    try:
        if body.get("queued"):  # the download cap: not this device's turn yet
            return None
        return CurrentDeployment(
            deployment_id=str(body["deployment_id"]),
            target_path=str(body["target_path"]),
            release_counter=int(body["release_counter"]),
            install_allowed=bool(body.get("install_allowed", True)),
            next_window=body.get("next_window"),
            force=bool(body.get("force", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AgentError("invalid_response", f"deployments/current: {exc}") from None


ReportAnswer = Literal["accepted", "aborted", "dropped"]


def send_report(client: DeviceClient, report: Report) -> ReportAnswer:
    """`accepted` (also for a repeat the server already has), `aborted` (the deployment was
    aborted: stop what has not been installed), `dropped` (the server will never take it: out of
    order, not in that deployment any more). A network error raises: the report stays queued."""
    body = {"status": report.status, "seq": report.seq}
    if report.detail:
        body["detail"] = report.detail
    try:
        client.call("POST", f"/device/v1/deployments/{report.deployment_id}/status", body)
    except ServerError as exc:
        if exc.code == "deployment_aborted":
            return "aborted"
        if exc.code in ("out_of_order", "not_in_deployment", "already_final", "deployment_not_found"):
            return "dropped"
        raise
    return "accepted"


def report_security_event(client: DeviceClient, code: str, detail: str) -> None:
    """Something only a broken or compromised server (or a man in the middle) causes: put on the
    server's audit log, where an operator sees it."""
    client.call("POST", EVENTS_PATH, {"type": "security", "code": code, "detail": detail[-2000:]})

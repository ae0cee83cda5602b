"""One simulated device: the agent's enrollment (its key store, signed envelope and certificate checks),
then check-ins that walk an update through the statuses the server expects.

What it does not do is verify TUF metadata: it reads the director's targets as the server sent them
(the agent's python-tuf client costs far more CPU than a device check-in costs the server). The
artifact bytes are still downloaded and their SHA-256 compared with the director's. See
docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fleetkeeper_agent.client import tls_context
from fleetkeeper_agent.deployment_client import CURRENT_PATH
from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.identity import (
    ENROLL_PATH,
    INVENTORY_PATH,
    RENEW_PATH,
    DeviceIdentity,
    IdentityState,
    enrollment_payload,
    renewal_due,
    store_issued,
)
from fleetkeeper_agent.inventory import limit_inventory
from fleetkeeper_agent.keystore import FileKeyStore
from fleetkeeper_agent.signing import signed_envelope
from fleetkeeper_agent.uptane import CUSTOM_KEY
from fleetkeeper_sim import __version__
from fleetkeeper_sim.http import Connection, ProtocolError, Response, problem_code
from fleetkeeper_sim.state import Progress, SimError
from fleetkeeper_sim.stats import Stats

TIMESTAMP_PATH = "/device/v1/director/metadata/timestamp.json"
TARGETS_PATH = "/device/v1/director/metadata/targets.json"
DOWNLOAD_PREFIX = "/device/v1/repository/targets/"
MAX_CACHED_CONTEXTS = 2000
RENEWAL_CHECK_SECONDS = 3600.0


class UnreachableError(Exception):
    """The server did not answer (refused, reset, timed out): counted, and the check-in ends."""


@dataclass
class Settings:
    server_url: str
    host: str
    port: int
    ca_pem: bytes
    token: str | None
    failure_rate: float
    inventory_interval: float
    max_download_bytes: int
    timeout: float = 30.0


class Fleet:
    """What every device of one process shares: the settings, the counters, the download slots."""

    def __init__(self, settings: Settings, stats: Stats, *, download_slots: int = 8) -> None:
        self.settings = settings
        self.stats = stats
        self.downloads = asyncio.Semaphore(download_slots)
        self.random = random.Random()  # noqa: S311 - simulated failures, not secrets
        # Enrollment needs no client certificate: one context for every device.
        self.anonymous_tls = tls_context(settings.ca_pem)
        # Loading a device's key and certificate costs more CPU than its check-in costs the server, so
        # contexts are kept, but only so many: each holds a few KiB of OpenSSL state.
        self._contexts: OrderedDict[Path, ssl.SSLContext] = OrderedDict()

    def device_tls(self, directory: Path) -> ssl.SSLContext:
        context = self._contexts.pop(directory, None)
        if context is None:
            context = tls_context(self.settings.ca_pem, FileKeyStore(directory))
            if len(self._contexts) >= MAX_CACHED_CONTEXTS:
                self._contexts.popitem(last=False)
        self._contexts[directory] = context
        return context

    def forget_tls(self, directory: Path) -> None:
        self._contexts.pop(directory, None)

    async def connect(self, context: ssl.SSLContext, kind: str) -> Connection:
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await Connection.open(self.settings.host, self.settings.port, context)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.stats.error(kind, f"connect: {_reason(exc)}")
            raise UnreachableError from None

    async def call(
        self, connection: Connection, kind: str, method: str, path: str, body: Any = None, **options: Any
    ) -> Response:
        """One timed request; a transport failure is counted under `kind` and raises UnreachableError."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await connection.request(method, path, body, **options)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
            self.stats.error(kind, _reason(exc))
            raise UnreachableError from None
        self.stats.ok(kind, time.perf_counter() - started)
        return response


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {str(exc)[:80]}"


class SimDevice:
    __slots__ = (
        "director_version",
        "directory",
        "identity",
        "inventory_at",
        "pending_only",
        "progress",
        "renewal_check_at",
        "serial",
    )

    def __init__(self, directory: Path, device_type: str, serial: str, *, pending_only: bool) -> None:
        self.directory = directory
        self.serial = serial
        self.pending_only = pending_only  # enrolls without the token: waits for an operator
        self.identity = IdentityState.load(directory) or IdentityState("", "", device_type, "pending")
        self.progress = Progress.load(directory) if directory.exists() else Progress()
        self.inventory_at = 0.0  # when the next inventory is due (time.monotonic)
        # The director timestamp's version when its targets last listed nothing: while it stays the
        # same, nothing changed for this device (python-tuf's client skips the other roles too).
        self.director_version: int | None = None
        self.renewal_check_at = 0.0  # when to look at the certificate's expiry again (time.monotonic)

    @property
    def accepted(self) -> bool:
        return self.identity.status == "accepted" and not self.progress.rejected

    # --- enrollment ---------------------------------------------------------------------------------

    async def enroll(self, fleet: Fleet) -> None:
        """One enrollment request (a pending device's poll is one too). Raises SimError when the
        server refuses the enrollment token: every other device would be refused as well."""
        store = FileKeyStore(self.directory)
        if not store.exists():
            await asyncio.to_thread(self._generate_key, store)
        identity = DeviceIdentity(self.identity.device_type, self.serial, attributes={"simulated": "true"})
        token = None if self.pending_only else fleet.settings.token
        envelope = signed_envelope(enrollment_payload(store, identity, token), store.sign)
        connection = await fleet.connect(fleet.anonymous_tls, "enroll")
        try:
            response = await fleet.call(connection, "enroll", "POST", ENROLL_PATH, envelope)
        finally:
            await connection.close()
        body = _json_object(response)
        if response.status == 200 and body.get("status") == "accepted":
            try:
                store_issued(store, body, str(body.get("device_id")), staged=False)
            except AgentError as exc:
                fleet.stats.error("enroll", exc.code)
                return
            self._save_identity(fleet, str(body["device_id"]), "accepted")
            fleet.stats.event("enrolled")
        elif response.status == 202:
            self._save_identity(fleet, str(body.get("device_id", "")), "pending")
            fleet.stats.event("enrollment pending")
        elif problem_code(response) == "invalid_enrollment_token":
            raise SimError(f"the server refused the enrollment token: {body.get('detail', '')}".rstrip(": "))
        elif problem_code(response) in ("enrollment_rejected", "device_decommissioned"):
            self.progress.rejected = True
            self.progress.save(self.directory)
            fleet.stats.event("rejected")
        else:
            fleet.stats.error("enroll", f"{response.status} {problem_code(response)}")

    def _generate_key(self, store: FileKeyStore) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        store.generate()

    def _save_identity(self, fleet: Fleet, device_id: str, status: Literal["accepted", "pending"]) -> None:
        self.identity = IdentityState(fleet.settings.server_url, device_id, self.identity.device_type, status)
        self.identity.save(self.directory)

    # --- check-in ------------------------------------------------------------------------------------

    async def check_in(self, fleet: Fleet) -> None:
        """The director's timestamp, its targets and the deployment when it lists one, one step of the
        update, the inventory when due; all on one connection, as the agent does."""
        connection = await fleet.connect(fleet.device_tls(self.directory), "checkin")
        try:
            timestamp = await fleet.call(connection, "checkin", "GET", TIMESTAMP_PATH)
            if timestamp.status != 200:
                fleet.stats.error("checkin", f"{timestamp.status} {problem_code(timestamp)}")
                return
            fleet.stats.event("checkins")
            if time.monotonic() >= self.renewal_check_at:
                await self._renew_when_due(fleet, connection)
            version = _signed_version(timestamp)
            if version is None or version != self.director_version or self.progress.update is not None:
                idle = await self._follow_director(fleet, connection)
                self.director_version = version if idle else None
            if time.monotonic() >= self.inventory_at:
                await self._send_inventory(fleet, connection)
        finally:
            await connection.close()

    async def _renew_when_due(self, fleet: Fleet, connection: Connection) -> None:
        """A new certificate when less than a third of its validity is left (the agent's rule), so
        that a state directory outlives the certificates in it."""
        store = FileKeyStore(self.directory)
        certificate = store.load_certificate()
        if certificate is not None and renewal_due(certificate):
            answer = await fleet.call(connection, "renew", "POST", RENEW_PATH)
            if answer.status != 200:
                fleet.stats.error("renew", f"{answer.status} {problem_code(answer)}")
                return
            try:
                store_issued(store, _json_object(answer), self.identity.device_id, staged=False)
            except AgentError as exc:
                fleet.stats.error("renew", exc.code)
                return
            fleet.forget_tls(self.directory)
            fleet.stats.event("certificates renewed")
        self.renewal_check_at = time.monotonic() + RENEWAL_CHECK_SECONDS

    async def _follow_director(self, fleet: Fleet, connection: Connection) -> bool:
        """True when the director lists nothing for this device."""
        targets = await fleet.call(connection, "targets", "GET", TARGETS_PATH)
        if targets.status != 200:
            fleet.stats.error("targets", f"{targets.status} {problem_code(targets)}")
            return False
        listed = _director_targets(targets)
        if not listed:
            if self.progress.update is not None:  # the deployment no longer asks for it (an abort)
                self.progress.update = None
                self.progress.save(self.directory)
                fleet.stats.event("update dropped")
            return True
        current = await fleet.call(connection, "current", "GET", CURRENT_PATH)
        if current.status == 404:
            return False  # no_deployment: the director moved on between the two requests
        body = _json_object(current)
        if current.status != 200:
            fleet.stats.error("current", f"{current.status} {problem_code(current)}")
        elif not body.get("queued") and str(body.get("target_path")) in listed:
            await self._update(fleet, connection, body, listed[str(body["target_path"])])
        return False

    async def _update(
        self, fleet: Fleet, connection: Connection, deployment: dict[str, Any], target: dict[str, Any]
    ) -> None:
        progress = self.progress
        deployment_id = str(deployment["deployment_id"])
        path = str(deployment["target_path"])
        update = progress.update
        if (
            update is None
            or update.get("deployment_id") != deployment_id
            or update.get("target_path") != path
        ):
            installed = progress.installed or {}
            if installed.get("target_path") == path and not deployment.get("force"):
                await self._report(fleet, connection, deployment_id, "already_installed")
                return
            update = progress.update = {
                "deployment_id": deployment_id,
                "target_path": path,
                "release": deployment.get("release"),
                "version": deployment.get("version"),
                "release_counter": deployment.get("release_counter"),
                "step": "downloading",
            }
            if not await self._report(fleet, connection, deployment_id, "downloading"):
                return
        step = update["step"]
        if step == "downloading":
            problem = await self._download(fleet, connection, path, target)
            if problem is not None:
                await self._finish(
                    fleet, connection, "refused" if "sha256" in problem else "failure", problem
                )
                return
            await self._advance(fleet, connection, "downloaded")
        elif step == "downloaded":
            if not deployment.get("install_allowed", True):
                return  # outside the maintenance window: wait (the agent would report deferred once)
            await self._advance(fleet, connection, "installing")
        elif step == "installing":
            if fleet.random.random() < fleet.settings.failure_rate:
                await self._finish(fleet, connection, "failure", "simulated install failure")
            else:
                await self._finish(fleet, connection, "success")

    async def _advance(self, fleet: Fleet, connection: Connection, step: str) -> None:
        assert self.progress.update is not None
        if await self._report(fleet, connection, self.progress.update["deployment_id"], step):
            self.progress.update["step"] = step
            self.progress.save(self.directory)

    async def _finish(
        self, fleet: Fleet, connection: Connection, status: str, detail: str | None = None
    ) -> None:
        update = self.progress.update
        assert update is not None
        if not await self._report(fleet, connection, update["deployment_id"], status, detail):
            return
        if status == "success":
            self.progress.installed = {
                "name": update["release"],
                "version": update["version"],
                "release_counter": update["release_counter"],
                "target_path": update["target_path"],
            }
            self.inventory_at = 0.0  # the agent reports its new release right after a commit
            fleet.stats.event("installed")
        else:
            fleet.stats.event(status)
        self.progress.update = None
        self.progress.save(self.directory)

    async def _report(
        self, fleet: Fleet, connection: Connection, deployment_id: str, status: str, detail: str | None = None
    ) -> bool:
        """True when the server took it. A deployment that no longer wants it ends the update."""
        self.progress.seq += 1
        self.progress.save(self.directory)
        body: dict[str, Any] = {"status": status, "seq": self.progress.seq}
        if detail:
            body["detail"] = detail
        answer = await fleet.call(
            connection, "report", "POST", f"/device/v1/deployments/{deployment_id}/status", body
        )
        if 200 <= answer.status < 300:
            fleet.stats.event(f"reported {status}")
            return True
        code = problem_code(answer)
        if code in (
            "deployment_aborted",
            "out_of_order",
            "not_in_deployment",
            "already_final",
            "deployment_not_found",
        ):
            self.progress.update = None  # what the agent's deployment_client calls dropped
            self.progress.save(self.directory)
            fleet.stats.event(f"dropped ({code})")
        else:
            fleet.stats.error("report", f"{answer.status} {code}")
        return False

    async def _download(
        self, fleet: Fleet, connection: Connection, path: str, target: dict[str, Any]
    ) -> str | None:
        """The artifact, bounded by its signed length and --max-download-bytes; its SHA-256 checked.
        None when it is good, else what was wrong."""
        length, sha256 = target.get("length"), (target.get("hashes") or {}).get("sha256")
        if not isinstance(length, int) or not isinstance(sha256, str):
            return "the director's target has no length or sha256"
        if length > fleet.settings.max_download_bytes:
            return f"{length} bytes: more than --max-download-bytes"
        directory, _, name = path.rpartition("/")
        url = (
            f"{DOWNLOAD_PREFIX}{directory}/{sha256}.{name}"
            if directory
            else f"{DOWNLOAD_PREFIX}{sha256}.{name}"
        )
        async with fleet.downloads:
            answer = await fleet.call(connection, "download", "GET", url, max_body=length)
        if answer.status != 200:
            fleet.stats.error("download", f"{answer.status} {problem_code(answer)}")
            return f"download: HTTP {answer.status}"
        if hashlib.sha256(answer.body).hexdigest() != sha256:
            return "sha256 of the download differs from the director's"
        fleet.stats.event("downloaded bytes", len(answer.body))
        return None

    async def _send_inventory(self, fleet: Fleet, connection: Connection) -> None:
        document: dict[str, Any] = {
            "device_type": self.identity.device_type,
            "os": {"name": "fleetkeeper-sim", "version": __version__},
            "agent_version": f"sim-{__version__}",
            "attributes": {"simulated": "true", "serial": self.serial},
        }
        installed = self.progress.installed
        if installed and installed.get("name") and installed.get("version"):
            document["release"] = {
                key: installed[key]
                for key in ("name", "version", "release_counter")
                if installed.get(key) is not None
            }
        answer = await fleet.call(connection, "inventory", "PUT", INVENTORY_PATH, limit_inventory(document))
        if 200 <= answer.status < 300:
            self.inventory_at = time.monotonic() + fleet.settings.inventory_interval
        else:
            fleet.stats.error("inventory", f"{answer.status} {problem_code(answer)}")


def _json_object(response: Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _signed_version(response: Response) -> int | None:
    try:
        version = response.json()["signed"]["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) else None


def _director_targets(response: Response) -> dict[str, dict[str, Any]]:
    """The director's targets for this device (read, not verified: see the module docstring)."""
    try:
        targets = response.json()["signed"]["targets"]
    except (ValueError, KeyError, TypeError):
        return {}
    return {
        str(path): entry
        for path, entry in targets.items()
        if isinstance(entry, dict) and isinstance(entry.get("custom", {}).get(CUSTOM_KEY), dict)
    }

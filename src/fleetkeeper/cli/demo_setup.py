"""What `fleetkeeper demo` puts into a running server, through its management API and the release
engineer's own tooling, once: a second run finds it all and reuses it.

Everything lives in `<data_dir>/demo/` (mode 0700): the setup account's API token, offline release
keys (only ever for a demo), the enrollment token, the signed artifacts, the simulator's devices.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2

from fleetkeeper.core.config import Settings

DEMO_USER = "demo-setup"
RELEASE_NAME = "demo-app"
DEVICE_TYPES = ("rpi4", "jetson-nano")
GROUP = "demo-fleet"
# Two devices first, then three, then (after an operator's "advance") the rest.
PHASES = [{"size": {"count": 2}}, {"size": {"count": 3}, "advance": "manual"}, {"size": {"percent": 100}}]
UNFINISHED = ("scheduled", "active", "paused")


class DemoError(Exception):
    """Why the demo cannot go on, in one sentence."""


@dataclass(frozen=True)
class Demo:
    directory: Path
    management_url: str
    api_token: str

    def client(self) -> httpx2.Client:
        return httpx2.Client(
            base_url=self.management_url,
            headers={"authorization": f"Bearer {self.api_token}"},
            timeout=httpx2.Timeout(60.0, connect=10.0),
            trust_env=False,
        )


def demo_directory(settings: Settings) -> Path:
    directory = settings.data_dir / "demo"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def _write_secret(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _check(response: httpx2.Response, what: str) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
            reason = f"{problem.get('code')}: {problem.get('detail')}"
        except ValueError:
            reason = response.text[:200]
        raise DemoError(f"{what}: HTTP {response.status_code} {reason}")
    return response.json() if response.content else None


# --- the account the setup works as -----------------------------------------------------------------


def sign_in_demo(settings: Settings, management_url: str) -> Demo:
    """An API token of the `demo-setup` administrator, made once and kept in the demo directory.

    The first admin's one-time password is the user's to change, so the setup has an account of its
    own, made (or, when its token is gone, given a new one-time password) from the server's console,
    as `fleetkeeper users reset-password` does."""
    directory = demo_directory(settings)
    token_file = directory / "api-token"
    if token_file.exists():
        demo = Demo(directory, management_url, token_file.read_text().strip())
        with demo.client() as client:
            if client.get("/api/v1/me").status_code == 200:
                return demo
    one_time = asyncio.run(_create_or_reset_account(settings))
    password = secrets.token_urlsafe(24)
    with httpx2.Client(base_url=management_url, timeout=30, trust_env=False) as client:
        first = _check(
            client.post("/api/v1/auth/sign-in", json={"username": DEMO_USER, "password": one_time}), "sign-in"
        )
        _check(
            client.post(
                "/api/v1/me/password",
                json={"current_password": one_time, "new_password": password},
                headers={"authorization": f"Bearer {first['access_token']}"},
            ),
            "password change",
        )
        session = _check(
            client.post("/api/v1/auth/sign-in", json={"username": DEMO_USER, "password": password}), "sign-in"
        )
        created = _check(
            client.post(
                "/api/v1/me/tokens",
                json={"name": "fleetkeeper demo", "expires_in_days": 366},
                headers={"authorization": f"Bearer {session['access_token']}"},
            ),
            "API token",
        )
    _write_secret(token_file, created["secret"])
    return Demo(directory, management_url, created["secret"])


async def _create_or_reset_account(settings: Settings) -> str:
    from fleetkeeper.access.permissions import GrantSet
    from fleetkeeper.access.principal import Principal
    from fleetkeeper.access.service import RoleAssignmentSpec, create_user, recover_password
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.errors import ConflictError

    database = Database(settings.resolved_database_url)
    console = Principal(
        user_id="console", username="fleetkeeper demo", grants=GrantSet.everything(), method="console"
    )
    try:
        try:
            _, one_time = await create_user(
                database, console, username=DEMO_USER, password=None, roles=[RoleAssignmentSpec("admin")]
            )
        except ConflictError:
            return await recover_password(database, DEMO_USER)
    finally:
        await database.dispose()
    assert one_time is not None  # no password given: a one-time one was made
    return one_time


# --- trust, releases, enrollment -----------------------------------------------------------------------


def _expires(days: int) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def install_trust(demo: Demo) -> Path:
    """Offline keys made for the demo (never use them for anything else) and the trust they sign."""
    from fleetkeeper.releases import remote
    from fleetkeeper.releases.keys import init_keys
    from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json

    keys = demo.directory / "keys"
    with demo.client() as client:
        installed = client.get("/api/v1/repository/metadata/root.json").status_code == 200
    if installed:
        if not (keys / "keys.json").exists():
            raise DemoError(
                "this data directory's server trusts release keys the demo does not hold: "
                "run the demo on a data directory of its own (make demo DATA_DIR=…)"
            )
        return keys
    if not (keys / "keys.json").exists():
        init_keys(keys, 1, 1)
    online = online_keys_from_json(remote.fetch_online_keys(demo.management_url, demo.api_token))
    trust = build_initial_trust(keys, online, _expires(365))
    remote.post_trust(
        demo.management_url,
        demo.api_token,
        {
            "root": trust.root.to_dict(),
            "targets": trust.targets.to_dict(),
            "director_root": trust.director_root.to_dict(),
        },
    )
    return keys


def demo_releases(demo: Demo) -> list[dict[str, Any]]:
    with demo.client() as client:
        page = _check(client.get("/api/v1/releases", params={"name": RELEASE_NAME, "limit": 500}), "releases")
    releases: list[dict[str, Any]] = page["items"]
    return sorted(releases, key=lambda release: int(release["release_counter"]))


def publish_release(demo: Demo, keys: Path, counter: int) -> dict[str, Any]:
    """demo-app 1.<counter-1>: packed, signed with the demo's offline keys, uploaded."""
    from fleetkeeper.releases import remote
    from fleetkeeper.releases.artifact import create_artifact
    from fleetkeeper.releases.errors import ReleaseError
    from fleetkeeper.releases.signing import sign_release
    from fleetkeeper.releases.trust import parse_targets
    from fleetkeeper.releases.upload_client import UploadError, upload

    version = f"1.{counter - 1}"
    directory = demo.directory / "releases" / version
    directory.mkdir(parents=True, exist_ok=True)
    payload = directory / "demo-app.txt"
    payload.write_text(f"fleetkeeper demo application {version}\n" * 2000)
    artifact = directory / f"{RELEASE_NAME}-{version}.fkr"
    try:
        create_artifact(
            artifact,
            name=RELEASE_NAME,
            version=version,
            release_counter=counter,
            module="file",
            device_types=list(DEVICE_TYPES),
            depends={},
            provides={},
            payload_paths=[payload],
            sbom_path=None,
        )
        current = parse_targets(remote.fetch_metadata(demo.management_url, demo.api_token, "targets.json"))
        sign_release(artifact, keys, current, _expires(365))
        return upload(artifact, demo.management_url, demo.api_token, tags=["demo"])
    except (ReleaseError, UploadError) as exc:
        raise DemoError(f"release {version}: {exc.code}: {exc.detail}") from None


def enrollment_token(demo: Demo) -> str:
    """An auto-accepting token into the demo group (made once; a new one if it was revoked or expired)."""
    saved = demo.directory / "enrollment-token.json"
    with demo.client() as client:
        names = {group["name"] for group in _check(client.get("/api/v1/device-groups"), "groups")}
        if GROUP not in names:
            _check(
                client.post("/api/v1/device-groups", json={"name": GROUP, "description": "fleetkeeper demo"}),
                "group",
            )
        if saved.exists():
            known = json.loads(saved.read_text())
            tokens = _check(client.get("/api/v1/enrollment-tokens"), "enrollment tokens")
            alive = [
                token
                for token in tokens
                if token["id"] == known["id"]
                and not token["revoked"]
                and datetime.fromisoformat(token["expires_at"]) > datetime.now(UTC) + timedelta(days=1)
            ]
            if alive:
                return str(known["secret"])
        made = _check(
            client.post(
                "/api/v1/enrollment-tokens",
                json={
                    "name": "fleetkeeper demo",
                    "expires_in_hours": 24 * 90,
                    "max_uses": 1000,
                    "auto_accept": True,
                    "group": GROUP,
                },
            ),
            "enrollment token",
        )
    _write_secret(saved, json.dumps({"id": made["token"]["id"], "secret": made["secret"]}))
    return str(made["secret"])


# --- the deployment -------------------------------------------------------------------------------


def ensure_deployment(demo: Demo, keys: Path, devices: int, within: float = 120) -> dict[str, Any]:
    """The demo's phased deployment under way: the one there is, or the next release's to the group
    once its devices have enrolled (a second `make demo` finds the fleet on the last one)."""
    with demo.client() as client:
        deployments = _check(client.get("/api/v1/deployments"), "deployments")
    releases = demo_releases(demo)
    ours = {release["id"]: release for release in releases}
    for deployment in deployments:
        if deployment["release_id"] in ours and deployment["status"] in UNFINISHED:
            return dict(deployment)
    deployed = {deployment["release_id"] for deployment in deployments}
    release = releases[-1] if releases and releases[-1]["id"] not in deployed else None
    if release is None:
        release = publish_release(demo, keys, int(releases[-1]["release_counter"]) + 1 if releases else 1)
    _wait_for_members(demo, devices, within)
    with demo.client() as client:
        created = _check(
            client.post(
                "/api/v1/deployments",
                json={
                    "name": f"{RELEASE_NAME} {release['version']} to the demo fleet",
                    "release": RELEASE_NAME,
                    "version": release["version"],
                    "target": {"group": GROUP},
                    "phases": PHASES,
                },
            ),
            "deployment",
        )
    return dict(created)


def _wait_for_members(demo: Demo, devices: int, within: float) -> None:
    deadline = time.monotonic() + within
    with demo.client() as client:
        while True:
            members = _check(
                client.get(f"/api/v1/device-groups/{GROUP}/devices", params={"limit": 100}), "members"
            )
            if len(members["items"]) >= devices:
                return
            if time.monotonic() > deadline:
                if members["items"]:
                    return  # go on with the devices there are
                raise DemoError(
                    f"no simulated device enrolled within {within:.0f} s: see {demo.directory / 'sim.log'}"
                )
            time.sleep(1)

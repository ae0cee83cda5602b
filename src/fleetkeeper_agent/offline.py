"""Offline installs: `fleetkeeper-agent install BUNDLE`, then `commit` or `rollback`.

A bundle (docs/software-trust.md, "Offline bundles") carries the image repository's metadata chain
and one target. It is verified by an unmodified ngclient Updater reading from the bundle instead of
the network, from the same trusted image root as online updates, with the same rules: signatures
and thresholds, expiry, versions never going back, the device type, a release counter not lower
than the highest installed, and the target's signed length and hashes. Nothing is extracted from
the bundle: each file is read by its exact name, and only regular files count.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from fleetkeeper_agent.checkin import TRUST_DIR
from fleetkeeper_agent.commands import run_health_checks
from fleetkeeper_agent.config import AgentConfig
from fleetkeeper_agent.errors import AgentError, UpdateRefused
from fleetkeeper_agent.identity import IdentityState
from fleetkeeper_agent.installer import clear_work_dir
from fleetkeeper_agent.tuf_client import run_tuf_step
from fleetkeeper_agent.update_failures import MAX_COMMIT_ATTEMPTS, MAX_ROLLBACK_ATTEMPTS
from fleetkeeper_agent.update_state import Installed, UpdateState
from fleetkeeper_agent.updates import UpdateFlow
from fleetkeeper_agent.uptane import VerifiedUpdate, signed_release

BUNDLE_FORMAT = "fleetkeeper-bundle-v1"
BUNDLE_URL = "bundle:///"
OFFLINE_DIR = "offline"  # the image repository's metadata as the bundles bring it, kept between installs
MAX_MANIFEST_BYTES = 64 * 1024
CHUNK = 1024 * 1024


class Bundle:
    """The regular files of a bundle by exact name; anything else in it is never read."""

    def __init__(self, path: Path) -> None:
        try:
            self._tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as exc:
            raise AgentError("invalid_bundle", f"{path}: not a bundle: {exc}") from None
        self._files: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self._tar.getmembers():
                if member.name in self._files:
                    raise AgentError("invalid_bundle", f"{path}: {member.name} appears twice")
                if member.isfile():
                    self._files[member.name] = member
        except tarfile.TarError as exc:
            self._tar.close()
            raise AgentError("invalid_bundle", f"{path}: damaged: {exc}") from None
        except AgentError:
            self._tar.close()
            raise

    def __enter__(self) -> Bundle:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tar.close()

    def open(self, name: str) -> IO[bytes] | None:
        member = self._files.get(name)
        return self._tar.extractfile(member) if member is not None else None

    def manifest(self) -> dict[str, object]:
        source = self.open("bundle.json")
        if source is None:
            raise AgentError("invalid_bundle", "no bundle.json: not a fleetkeeper bundle")
        try:
            manifest = json.loads(source.read(MAX_MANIFEST_BYTES + 1)[: MAX_MANIFEST_BYTES + 1])
        except ValueError as exc:
            raise AgentError("invalid_bundle", f"bundle.json: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise AgentError("invalid_bundle", f"bundle.json: not {BUNDLE_FORMAT}")
        if not isinstance(manifest.get("target_path"), str):
            raise AgentError("invalid_bundle", "bundle.json: no target_path")
        return manifest


class BundleFetcher(FetcherInterface):
    """ngclient's network, served from the bundle: a missing file is a 404, as a server would say."""

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(BUNDLE_URL)
        source = self._bundle.open(name)
        if source is None:
            raise exceptions.DownloadHTTPError(f"{name}: not in the bundle", 404)
        return iter(lambda: source.read(CHUNK), b"")


def install_bundle(config: AgentConfig, path: Path) -> UpdateState:
    """Verifies the bundle, installs its release, and stops before committing: `commit` (after its
    health checks) or `rollback` decides. Nothing is installed if anything fails to verify."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = UpdateState.load(config.data_dir)
    if state.phase != "idle":
        raise AgentError("busy", f"an install is under way ({state.phase} {state.target_path})")
    device_type = _device_type(config)
    flow = UpdateFlow(config, None, None)
    with Bundle(path) as bundle:
        target_path = str(bundle.manifest()["target_path"])
        update = _verify_and_copy(
            config, bundle, target_path, device_type, state.installed.highest_counter, flow
        )
    started = state.moved(
        "installing",
        deployment_id=None,
        target_path=update.target_path,
        length=update.length,
        hashes=dict(update.hashes),
        release=dict(update.release),
        release_counter=update.release_counter,
    )
    try:
        clear_work_dir(config.data_dir, started)
    except OSError as exc:
        raise AgentError(
            "io_error", f"cannot clear the work directory of {update.target_path}: {exc}"
        ) from None
    started.save(config.data_dir)
    flow.advance(started)
    return UpdateState.load(config.data_dir)


def _device_type(config: AgentConfig) -> str:
    identity = IdentityState.load(config.data_dir)
    device_type = identity.device_type if identity else config.enrollment.device_type
    if device_type is None:
        raise AgentError(
            "not_enrolled", "the device type is unknown: enroll, or set [enrollment] device_type"
        )
    return device_type


def _updater(config: AgentConfig, bundle: Bundle) -> Updater:
    """ngclient over the bundle, its metadata in data_dir/tuf/offline, which starts from the same
    trusted image root as online updates and keeps what bundles brought (so none can go back)."""
    directory = config.data_dir / TRUST_DIR / OFFLINE_DIR
    if not (directory / "root.json").exists():
        image_root = config.data_dir / TRUST_DIR / "image" / "root.json"
        provisioned = image_root if image_root.exists() else config.image_root
        if provisioned is None or not provisioned.exists():
            raise AgentError(
                "not_initialized", "no trusted image root: provision it first ([trust] image_root)"
            )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(provisioned, directory / "root.json")
    return run_tuf_step(
        lambda: Updater(
            metadata_dir=str(directory),
            metadata_base_url=BUNDLE_URL + "metadata/",
            target_base_url=BUNDLE_URL + "targets/",
            fetcher=BundleFetcher(bundle),
            config=UpdaterConfig(prefix_targets_with_hash=True),
            bootstrap=None,
        ),
        "bundle",
        UpdateRefused,
    )


def _verify_and_copy(
    config: AgentConfig, bundle: Bundle, target_path: str, device_type: str, highest: int, flow: UpdateFlow
) -> VerifiedUpdate:
    """Checks the metadata chain and the release, then copies the target out through ngclient, which
    checks its signed length and hashes."""
    updater = _updater(config, bundle)
    run_tuf_step(updater.refresh, "bundle", UpdateRefused)
    signed = run_tuf_step(lambda: updater.get_targetinfo(target_path), "bundle", UpdateRefused)
    if signed is None:
        raise UpdateRefused("unknown_target", f"the bundle's signed metadata does not list {target_path}")
    update = signed_release(signed, device_type, highest)
    payload = flow.payload_path(update.hashes, update.target_path)
    payload.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_tuf_step(lambda: updater.download_target(signed, str(payload)), "bundle", UpdateRefused)
    return update


def commit_offline(config: AgentConfig) -> Installed:
    """Health checks, then one commit attempt; run again, tries again a commit that failed, up to
    MAX_COMMIT_ATTEMPTS, after which the install is rolled back as the daemon would."""
    state = UpdateState.load(config.data_dir)
    if state.phase not in ("awaiting_commit", "committing"):
        raise AgentError(
            "nothing_to_commit", f"no installed release waits for a commit (state: {state.phase})"
        )
    outcome = run_health_checks(config.health_commands, timeout=config.health_timeout)
    if not outcome.ok:
        raise AgentError("health_check_failed", f"{outcome.tail}\n(nothing committed; `rollback` goes back)")
    flow = UpdateFlow(config, None, None)
    after = flow.installer.step(state.moved("committing"))
    if after is None:
        failed = UpdateState.load(config.data_dir)
        raise AgentError(
            "commit_failed",
            f"{failed.commit_error} (attempt {failed.commit_attempts} of {MAX_COMMIT_ATTEMPTS}; run "
            "`fleetkeeper-agent commit` again, or `rollback`)",
        )
    if after.phase == "idle":
        return after.installed
    rolled = flow.advance(after)  # given up: rolled back
    if rolled.phase == "rolling_back_rebooting":
        raise AgentError(
            "commit_failed", f"{after.detail}; rolling back: rebooting into the previous release"
        )
    if rolled.phase == "rolling_back":
        raise AgentError(
            "commit_failed",
            f"{after.detail}; rollback failed: {rolled.rollback_error} "
            "(run `fleetkeeper-agent rollback` again)",
        )
    raise AgentError("commit_failed", f"{after.detail}; rolled back")


def rollback_offline(config: AgentConfig) -> UpdateState:
    """Rolls back an uncommitted offline install; run again, tries again a rollback that failed."""
    state = UpdateState.load(config.data_dir)
    if state.deployment_id is not None or state.phase not in (
        "awaiting_commit",
        "installing",
        "verifying",
        "committing",
        "rolling_back",
    ):
        raise AgentError(
            "nothing_to_roll_back", f"no uncommitted offline install to roll back (state: {state.phase})"
        )
    if state.phase != "rolling_back":
        state = state.moved("rolling_back", detail="rolled back by the operator")
    after = UpdateFlow(config, None, None).advance(state)
    if after.phase == "rolling_back":
        raise AgentError(
            "rollback_failed",
            f"{after.rollback_error} (attempt {after.rollback_attempts} of {MAX_ROLLBACK_ATTEMPTS}; "
            "run `fleetkeeper-agent rollback` again)",
        )
    record = after.failed_rollback
    if record is not None and record != state.failed_rollback:
        raise AgentError(
            "rollback_failed",
            f"gave up after {record.attempts} attempts: {record.detail}; the module's journal and backups "
            f"are in {record.kept_dir}",
        )
    return UpdateState.load(config.data_dir)

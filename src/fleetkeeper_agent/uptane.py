"""Uptane on the device: refresh the per-device director and the image repository with python-tuf's
ngclient, cross-check what they say, and download the one target they agree on — resumable, never more
than its signed length, verified before it takes its final name.

What a compromised server can do against these checks is withhold updates or name a release that the
release keys signed for this device type and that is not older than the installed one; everything else
is refused with `UpdateRefused` and a code saying why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tuf.api import exceptions
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from fleetkeeper_agent.errors import AgentError, UpdateRefused
from fleetkeeper_agent.fetcher import MtlsFetcher
from fleetkeeper_agent.files import fsync_directory
from fleetkeeper_agent.tuf_client import run_tuf_step

CUSTOM_KEY: Final = "fleetkeeper"
IMAGE_DIR: Final = "image"
DIRECTOR_DIR: Final = "director"
# Consecutive broken transfers that brought no new byte before download() gives up (network_error).
MAX_STALLED_ATTEMPTS: Final = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedUpdate:
    """A target both repositories vouch for, for this device, not older than what is installed."""

    target_path: str
    length: int
    hashes: dict[str, str]
    release: dict[str, Any]
    release_counter: int


class UpdateChecker:
    """Checks for and downloads this device's update. Metadata lives in `tuf_dir/director/` and
    `tuf_dir/image/`, each starting from a provisioned `root.json`."""

    def __init__(
        self,
        tuf_dir: Path,
        server_url: str,
        tls: ssl.SSLContext,
        device_id: str,
        device_type: str,
        *,
        redirect_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tuf_dir = tuf_dir
        self.server_url = server_url.rstrip("/")
        self.device_id = device_id
        self.device_type = device_type
        self._tls = tls
        self._redirect_tls = redirect_tls

    @property
    def director_url(self) -> str:
        return f"{self.server_url}/device/v1/director/metadata/"

    @property
    def image_url(self) -> str:
        return f"{self.server_url}/device/v1/repository/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.server_url}/device/v1/repository/targets/"

    def _fetcher(self) -> MtlsFetcher:
        return MtlsFetcher(self._tls, redirect_tls=self._redirect_tls)

    # --- check ---------------------------------------------------------------------------------------

    def check(self, highest_installed_counter: int) -> VerifiedUpdate | None:
        """Refresh the director, then (only when it lists a target) the image repository; None when
        the director lists nothing. See the module docstring for what is refused."""
        for name in (DIRECTOR_DIR, IMAGE_DIR):
            self._require_root(name)
        with self._fetcher() as fetcher:
            director = self._updater(DIRECTOR_DIR, self.director_url, fetcher)
            _refreshed(director, "director")
            wanted = self._director_target()
            if wanted is None:
                return None
            assigned_counter = self._check_director_target(wanted)
            if assigned_counter < highest_installed_counter:
                raise UpdateRefused(
                    "rollback_attack",
                    f"the director assigns release counter {assigned_counter}, "
                    f"lower than the installed {highest_installed_counter}",
                )
            image = self._updater(IMAGE_DIR, self.image_url, fetcher)
            _refreshed(image, "image repository")
            signed = run_tuf_step(
                lambda: image.get_targetinfo(wanted.path), "image repository", UpdateRefused
            )
        if signed is None:
            raise UpdateRefused("unknown_target", f"the image repository has no target {wanted.path!r}")
        return self._agreed_update(wanted, signed, assigned_counter, highest_installed_counter)

    def _require_root(self, name: str) -> None:
        root = self.tuf_dir / name / "root.json"
        if not root.is_file():
            raise AgentError("not_initialized", f"no trusted root in {root}: provision it first")

    def _updater(self, name: str, metadata_url: str, fetcher: MtlsFetcher) -> Updater:
        directory = self.tuf_dir / name
        try:
            return Updater(
                metadata_dir=str(directory),
                metadata_base_url=metadata_url,
                target_base_url=self.targets_url,
                fetcher=fetcher,
                config=UpdaterConfig(prefix_targets_with_hash=True),
                bootstrap=None,
            )
        except exceptions.RepositoryError as exc:
            raise UpdateRefused("invalid_metadata", f"the trusted {name} root: {exc}") from None

    def _director_target(self) -> TargetFile | None:
        # ngclient stores targets.json only after verifying it in this refresh (or keeps the verified
        # copy when it did not change), so the file holds what the director's keys signed.
        path = self.tuf_dir / DIRECTOR_DIR / "targets.json"
        try:
            targets = Metadata[Targets].from_bytes(path.read_bytes()).signed
        except Exception as exc:
            raise UpdateRefused("invalid_metadata", f"director targets: {exc}") from None
        listed = list(targets.targets.values())
        if len(listed) > 1:
            raise UpdateRefused(
                "invalid_metadata", f"the director lists {len(listed)} targets; a device runs one at a time"
            )
        return listed[0] if listed else None

    def _check_director_target(self, wanted: TargetFile) -> int:
        custom = wanted.custom.get(CUSTOM_KEY) if isinstance(wanted.custom, dict) else None
        if not isinstance(custom, dict):
            raise UpdateRefused(
                "invalid_metadata", f"director target {wanted.path!r} has no custom.{CUSTOM_KEY}"
            )
        if custom.get("device_id") != self.device_id or custom.get("device_type") != self.device_type:
            raise UpdateRefused(
                "device_mismatch",
                f"the director's target is for {custom.get('device_id')!r} ({custom.get('device_type')!r}),"
                f" this is {self.device_id!r} ({self.device_type!r})",
            )
        return _counter(custom.get("release_counter"), "director")

    def _agreed_update(
        self, wanted: TargetFile, signed: TargetFile, assigned_counter: int, highest_installed: int
    ) -> VerifiedUpdate:
        if signed.length != wanted.length:
            raise UpdateRefused(
                "repositories_disagree",
                f"{wanted.path}: length {wanted.length} (director) != {signed.length} (image repository)",
            )
        common = set(wanted.hashes) & set(signed.hashes)
        if not common or any(wanted.hashes[name] != signed.hashes[name] for name in common):
            raise UpdateRefused(
                "repositories_disagree", f"{wanted.path}: the hashes differ between repositories"
            )
        update = signed_release(signed, self.device_type, highest_installed)
        if update.release_counter != assigned_counter:
            raise UpdateRefused(
                "repositories_disagree",
                f"{signed.path}: release counter {assigned_counter} (director), "
                f"{update.release_counter} (image)",
            )
        return update

    # --- download ------------------------------------------------------------------------------------

    def download(self, update: VerifiedUpdate, dest: Path) -> Path:
        """Fetch the target into `dest.with_suffix('.part')`, resuming from what is there, never past
        `update.length`; verify length and every hash, then rename to `dest` (fsynced). Returns `dest`."""
        part = dest.with_suffix(".part")
        url = self.targets_url + consistent_target_path(update)
        stalled = 0
        with self._fetcher() as fetcher:
            while True:
                have = part.stat().st_size if part.exists() else 0
                if have > update.length:
                    part.unlink()  # left by something else: no prefix of the target is that long
                    have = 0
                if have == update.length:
                    break
                try:
                    _fetch_into(fetcher, url, part, have, update.length)
                except exceptions.DownloadError as exc:
                    now = part.stat().st_size if part.exists() else 0
                    stalled = 0 if now > have else stalled + 1
                    if stalled >= MAX_STALLED_ATTEMPTS or isinstance(exc, exceptions.DownloadHTTPError):
                        raise AgentError(
                            "network_error", f"downloading {update.target_path}: {exc}"
                        ) from None
                    log.info("download of %s broke at byte %d; resuming", update.target_path, now)
        _verify_file(part, update)
        os.replace(part, dest)
        fsync_directory(dest.parent)
        return dest


def signed_release(signed: TargetFile, device_type: str, highest_installed: int) -> VerifiedUpdate:
    """The image repository's target as a release for this device: signed custom fields present,
    made for its device type, and not older than the highest release counter installed. Online
    updates and offline bundles both go through it."""
    release = signed.custom.get(CUSTOM_KEY) if isinstance(signed.custom, dict) else None
    if not isinstance(release, dict):
        raise UpdateRefused(
            "invalid_metadata", f"image target {signed.path!r} has no signed custom.{CUSTOM_KEY}"
        )
    device_types = release.get("device_types")
    if not isinstance(device_types, list) or device_type not in device_types:
        raise UpdateRefused(
            "device_type_mismatch",
            f"{signed.path}: signed for device types {device_types!r}, not {device_type!r}",
        )
    counter = _counter(release.get("release_counter"), "image repository")
    if counter < highest_installed:
        raise UpdateRefused(
            "rollback_attack", f"release counter {counter} is lower than the installed {highest_installed}"
        )
    return VerifiedUpdate(
        target_path=signed.path,
        length=signed.length,
        hashes=dict(signed.hashes),
        release=dict(release),
        release_counter=counter,
    )


def consistent_target_path(update: VerifiedUpdate) -> str:
    """The server serves targets by consistent-snapshot name: `<dir>/<sha256>.<file>` (its roots
    require consistent snapshots)."""
    directory, _, name = update.target_path.rpartition("/")
    prefixed = f"{update.hashes['sha256']}.{name}" if "sha256" in update.hashes else name
    return f"{directory}/{prefixed}" if directory else prefixed


def _fetch_into(fetcher: MtlsFetcher, url: str, part: Path, have: int, length: int) -> None:
    """Append to `part` from byte `have`; refuse (and drop the part) a server that sends more than
    `length` in total."""
    with fetcher.open(url, have) as response:
        status = response.status_code
        if status == 416 and have > 0:
            part.unlink()  # the server has fewer bytes than we do: start over, the hash decides
            raise exceptions.DownloadError(f"{url}: range from {have} not satisfiable; starting over")
        if status == 200 and have > 0:
            have = 0  # the range was ignored: the whole file follows
        elif status == 206:
            _check_content_range(response.headers.get("content-range"), have, url)
        elif status != 200:
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {status}", status)
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and have + int(declared) > length:
            part.unlink(missing_ok=True)
            raise UpdateRefused(
                "download_too_large",
                f"the server announces {have + int(declared)} bytes; {length} are signed",
            )
        too_large = False
        with part.open("r+b" if have > 0 else "wb") as out:
            out.seek(have)
            out.truncate()
            written = have
            try:
                for chunk in fetcher.chunks(response):
                    if written + len(chunk) > length:
                        too_large = True
                        break
                    out.write(chunk)
                    written += len(chunk)
            finally:
                # What arrived before a break is kept and made durable: the next attempt resumes there.
                out.flush()
                os.fsync(out.fileno())
        if too_large:
            part.unlink()
            raise UpdateRefused("download_too_large", f"the server sent more than the {length} signed bytes")


def _check_content_range(header: str | None, start: int, url: str) -> None:
    # "bytes <start>-<end>/<size>": a range that does not start where we asked would splice wrong bytes.
    if header is None or not header.startswith(f"bytes {start}-"):
        raise exceptions.DownloadError(f"{url}: answer for another range ({header!r}, asked from {start})")


def _verify_file(part: Path, update: VerifiedUpdate) -> None:
    size = part.stat().st_size
    if size != update.length:
        part.unlink()
        raise UpdateRefused("hash_mismatch", f"{update.target_path}: {size} bytes, {update.length} signed")
    try:
        digests = {name: hashlib.new(name) for name in update.hashes}
    except ValueError as exc:
        raise UpdateRefused("invalid_metadata", f"{update.target_path}: {exc}") from None
    with part.open("rb") as source:
        while block := source.read(1024 * 1024):
            for digest in digests.values():
                digest.update(block)
    wrong = sorted(name for name, digest in digests.items() if digest.hexdigest() != update.hashes[name])
    if wrong:
        part.unlink()
        raise UpdateRefused(
            "hash_mismatch", f"{update.target_path}: {', '.join(wrong)} differ from the signed"
        )


def _counter(value: object, where: str) -> int:
    # bool is an int in Python, and `true` must not pass for a release counter.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UpdateRefused("invalid_metadata", f"{where}: release_counter {value!r} is not a counter")
    return value


def _refreshed(updater: Updater, name: str) -> None:
    run_tuf_step(updater.refresh, name, UpdateRefused)

"""The director's signing logic: per-device targets, snapshot and timestamp under the fleet-wide root.

Pure functions: metadata in, metadata out. Nothing here stores or serves; the caller keeps the three
`Metadata` objects of each device (or their bytes, `DeviceMetadata.from_bytes` reads them back) and serves
`DeviceMetadata.files()` byte for byte, because snapshot and timestamp pin the length and sha256 of exactly
those bytes.

Expiry and refresh defaults: targets and snapshot expire 7 days after signing, timestamp 1 day after; a role
is re-signed (version + 1) once less than half of its period is left, so a device that checks in at least
twice a period never meets expired metadata while the server runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

# tuf re-exports its public API without __all__, which mypy --strict reads as private.
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from fleetkeeper.releases.online_keys import (
    DIRECTOR_SNAPSHOT,
    DIRECTOR_TARGETS,
    DIRECTOR_TIMESTAMP,
    OnlineKeys,
)
from fleetkeeper.releases.repository import to_bytes

DEFAULT_TARGETS_EXPIRY: Final = timedelta(days=7)
DEFAULT_SNAPSHOT_EXPIRY: Final = timedelta(days=7)
DEFAULT_TIMESTAMP_EXPIRY: Final = timedelta(days=1)

CUSTOM_KEY: Final = "fleetkeeper"

_HASH_ALGORITHM: Final = "sha256"


@dataclass(frozen=True)
class Assignment:
    """What one device must run now: one target of the image repository, as the director lists it."""

    target_path: str
    length: int
    hashes: dict[str, str]
    device_id: str
    device_type: str
    release_counter: int

    def __post_init__(self) -> None:
        if not self.target_path or not self.device_id or not self.device_type:
            raise ValueError("assignment: target_path, device_id and device_type must not be empty")
        if self.length < 0 or self.release_counter < 0:
            raise ValueError("assignment: length and release_counter must be >= 0")
        if not self.hashes:
            raise ValueError("assignment: at least one hash is needed for the device to check the payload")


@dataclass
class DeviceMetadata:
    """One device's director metadata; the three always belong together (timestamp → snapshot → targets)."""

    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]

    def targets_bytes(self) -> bytes:
        return to_bytes(self.targets)

    def snapshot_bytes(self) -> bytes:
        return to_bytes(self.snapshot)

    def timestamp_bytes(self) -> bytes:
        return to_bytes(self.timestamp)

    def files(self) -> dict[str, bytes]:
        """Served files by consistent-snapshot name: `N.targets.json`, `N.snapshot.json`, `timestamp.json`."""
        return {
            f"{self.targets.signed.version}.targets.json": self.targets_bytes(),
            f"{self.snapshot.signed.version}.snapshot.json": self.snapshot_bytes(),
            "timestamp.json": self.timestamp_bytes(),
        }

    @classmethod
    def from_bytes(cls, targets: bytes, snapshot: bytes, timestamp: bytes) -> DeviceMetadata:
        return cls(
            targets=Metadata[Targets].from_bytes(targets),
            snapshot=Metadata[Snapshot].from_bytes(snapshot),
            timestamp=Metadata[Timestamp].from_bytes(timestamp),
        )


def assignment_of(targets: Metadata[Targets]) -> Assignment | None:
    """The assignment a director targets metadata carries, or None when it lists nothing."""
    listed = list(targets.signed.targets.values())
    if not listed:
        return None
    if len(listed) > 1:
        raise ValueError(f"director targets lists {len(listed)} targets; a device runs one at a time")
    target = listed[0]
    custom = target.custom.get(CUSTOM_KEY) if isinstance(target.custom, dict) else None
    if not isinstance(custom, dict):
        raise ValueError(f"director target {target.path!r} has no custom.{CUSTOM_KEY}")
    try:
        device_id, device_type = custom["device_id"], custom["device_type"]
        counter = custom["release_counter"]
    except KeyError as error:
        raise ValueError(f"director target {target.path!r}: custom.{CUSTOM_KEY} lacks {error}") from error
    if not isinstance(device_id, str) or not isinstance(device_type, str):
        raise ValueError(f"director target {target.path!r}: device_id and device_type must be strings")
    # bool is an int in Python, and `true` must not pass for a release counter.
    if not isinstance(counter, int) or isinstance(counter, bool):
        raise ValueError(f"director target {target.path!r}: release_counter must be an integer")
    return Assignment(
        target_path=target.path,
        length=target.length,
        hashes=dict(target.hashes),
        device_id=device_id,
        device_type=device_type,
        release_counter=counter,
    )


def build_device_metadata(
    keys: OnlineKeys,
    assignment: Assignment | None,
    previous: DeviceMetadata | None,
    *,
    now: datetime,
    targets_expiry: timedelta = DEFAULT_TARGETS_EXPIRY,
    snapshot_expiry: timedelta = DEFAULT_SNAPSHOT_EXPIRY,
    timestamp_expiry: timedelta = DEFAULT_TIMESTAMP_EXPIRY,
) -> DeviceMetadata:
    """Director metadata that tells the device to run `assignment` (or nothing new, when None).

    When `previous` already says the same, `previous` itself is returned (test with `is`): there is nothing
    to store, and only `refresh_device_metadata` may be due. Otherwise every role gets version + 1 over
    `previous`, so a device that saw the old metadata accepts the new one and never goes back.
    """
    now = _utc(now)
    if previous is not None and assignment_of(previous.targets) == assignment:
        return previous
    targets = Metadata(
        Targets(
            version=_next_version(previous.targets if previous else None),
            expires=now + targets_expiry,
            targets=_target_files(assignment),
        )
    )
    targets.sign(keys.signer(DIRECTOR_TARGETS))
    return _with_new_snapshot(
        keys,
        targets,
        previous,
        now=now,
        snapshot_expiry=snapshot_expiry,
        timestamp_expiry=timestamp_expiry,
    )


def refresh_timestamp(
    keys: OnlineKeys,
    previous: DeviceMetadata,
    *,
    now: datetime,
    timestamp_expiry: timedelta = DEFAULT_TIMESTAMP_EXPIRY,
    refresh_before: timedelta | None = None,
) -> DeviceMetadata | None:
    """A new timestamp (version + 1, same snapshot) when the current one expires within `refresh_before`
    (default: half of `timestamp_expiry`); None when it is not due yet.

    This is the cheap path a check-in or the re-signing job takes; `refresh_device_metadata` also looks at
    targets and snapshot.
    """
    now = _utc(now)
    if not _due(previous.timestamp.signed.expires, now, refresh_before, timestamp_expiry):
        return None
    return DeviceMetadata(
        targets=previous.targets,
        snapshot=previous.snapshot,
        timestamp=_sign_timestamp(keys, previous.snapshot, previous, now=now, expiry=timestamp_expiry),
    )


def refresh_device_metadata(
    keys: OnlineKeys,
    previous: DeviceMetadata,
    *,
    now: datetime,
    targets_expiry: timedelta = DEFAULT_TARGETS_EXPIRY,
    snapshot_expiry: timedelta = DEFAULT_SNAPSHOT_EXPIRY,
    timestamp_expiry: timedelta = DEFAULT_TIMESTAMP_EXPIRY,
    targets_refresh_before: timedelta | None = None,
    snapshot_refresh_before: timedelta | None = None,
    timestamp_refresh_before: timedelta | None = None,
) -> DeviceMetadata | None:
    """Re-sign whatever is near its expiry, with the same content and version + 1; None when nothing is due.

    Each `*_refresh_before` defaults to half of that role's expiry. A new targets brings a new snapshot, and
    a new snapshot a new timestamp, because each names the version of the one below it.
    """
    now = _utc(now)
    if _due(previous.targets.signed.expires, now, targets_refresh_before, targets_expiry):
        targets = Metadata(
            Targets(
                version=previous.targets.signed.version + 1,
                expires=now + targets_expiry,
                targets=dict(previous.targets.signed.targets),
            )
        )
        targets.sign(keys.signer(DIRECTOR_TARGETS))
        return _with_new_snapshot(
            keys,
            targets,
            previous,
            now=now,
            snapshot_expiry=snapshot_expiry,
            timestamp_expiry=timestamp_expiry,
        )
    if _due(previous.snapshot.signed.expires, now, snapshot_refresh_before, snapshot_expiry):
        return _with_new_snapshot(
            keys,
            previous.targets,
            previous,
            now=now,
            snapshot_expiry=snapshot_expiry,
            timestamp_expiry=timestamp_expiry,
        )
    return refresh_timestamp(
        keys, previous, now=now, timestamp_expiry=timestamp_expiry, refresh_before=timestamp_refresh_before
    )


def _target_files(assignment: Assignment | None) -> dict[str, TargetFile]:
    if assignment is None:
        return {}
    custom = {
        "device_id": assignment.device_id,
        "device_type": assignment.device_type,
        "release_counter": assignment.release_counter,
    }
    target = TargetFile(
        length=assignment.length,
        hashes=dict(assignment.hashes),
        path=assignment.target_path,
        unrecognized_fields={"custom": {CUSTOM_KEY: custom}},
    )
    return {assignment.target_path: target}


def _with_new_snapshot(
    keys: OnlineKeys,
    targets: Metadata[Targets],
    previous: DeviceMetadata | None,
    *,
    now: datetime,
    snapshot_expiry: timedelta,
    timestamp_expiry: timedelta,
) -> DeviceMetadata:
    snapshot = Metadata(
        Snapshot(
            version=_next_version(previous.snapshot if previous else None),
            expires=now + snapshot_expiry,
            meta={"targets.json": _meta_file(targets)},
        )
    )
    snapshot.sign(keys.signer(DIRECTOR_SNAPSHOT))
    timestamp = _sign_timestamp(keys, snapshot, previous, now=now, expiry=timestamp_expiry)
    return DeviceMetadata(targets=targets, snapshot=snapshot, timestamp=timestamp)


def _sign_timestamp(
    keys: OnlineKeys,
    snapshot: Metadata[Snapshot],
    previous: DeviceMetadata | None,
    *,
    now: datetime,
    expiry: timedelta,
) -> Metadata[Timestamp]:
    timestamp = Metadata(
        Timestamp(
            version=_next_version(previous.timestamp if previous else None),
            expires=now + expiry,
            snapshot_meta=_meta_file(snapshot),
        )
    )
    timestamp.sign(keys.signer(DIRECTOR_TIMESTAMP))
    return timestamp


def _meta_file(metadata: Metadata[Any]) -> MetaFile:
    # Length and hash, not only the version: a device then refuses any other bytes under that version name.
    data = to_bytes(metadata)
    return MetaFile(
        version=metadata.signed.version,
        length=len(data),
        hashes={_HASH_ALGORITHM: hashlib.sha256(data).hexdigest()},
    )


def _next_version(previous: Metadata[Any] | None) -> int:
    return 1 if previous is None else previous.signed.version + 1


def _due(expires: datetime, now: datetime, refresh_before: timedelta | None, expiry: timedelta) -> bool:
    return expires - now <= (expiry / 2 if refresh_before is None else refresh_before)


def _utc(now: datetime) -> datetime:
    # TUF writes expiry in UTC at whole seconds; a naive time could be any zone, so it is refused.
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).replace(microsecond=0)

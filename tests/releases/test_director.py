"""Director metadata as a device sees it: served over HTTP and refreshed by an unmodified tuf ngclient."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import ExpiredMetadataError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from fleetkeeper.deployments.director.metadata import (
    Assignment,
    DeviceMetadata,
    assignment_of,
    build_device_metadata,
    refresh_device_metadata,
    refresh_timestamp,
)
from fleetkeeper.releases.online_keys import (
    DIRECTOR_SNAPSHOT,
    DIRECTOR_TARGETS,
    DIRECTOR_TIMESTAMP,
    ONLINE_ROLES,
    OnlineKeys,
    load_or_create_online_keys,
)
from fleetkeeper.releases.repository import to_bytes

FIRMWARE_1 = Assignment(
    target_path="firmware/1.0.0/firmware.bin",
    length=1024,
    hashes={"sha256": "a" * 64},
    device_id="dev-0001",
    device_type="raspberrypi4",
    release_counter=10,
)
FIRMWARE_2 = replace(
    FIRMWARE_1, target_path="firmware/1.1.0/firmware.bin", hashes={"sha256": "b" * 64}, release_counter=11
)


def _now() -> datetime:
    return datetime.now(UTC)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class DirectorRepository:
    """A director for one device as a plain directory behind http.server, the way a device fetches it."""

    directory: Path
    url: str
    root_bytes: bytes

    def publish(self, metadata: DeviceMetadata) -> None:
        for name, data in metadata.files().items():
            (self.directory / name).write_bytes(data)

    def updater(self, client_dir: Path) -> Updater:
        (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
        (client_dir / "targets").mkdir(parents=True, exist_ok=True)
        return Updater(
            str(client_dir / "metadata"),
            self.url,
            str(client_dir / "targets"),
            self.url.replace("/metadata/", "/targets/"),
            bootstrap=self.root_bytes,
        )


@pytest.fixture
def keys(tmp_path: Path) -> OnlineKeys:
    return load_or_create_online_keys(tmp_path / "pki" / "tuf")


def _director_root(keys: OnlineKeys) -> Metadata[Root]:
    # Offline in production (fleetkeeper trust init); here a root key made for the test stands in.
    root_signer = CryptoSigner.generate_ed25519()
    root = Root(expires=_now() + timedelta(days=365), consistent_snapshot=True)
    root.add_key(root_signer.public_key, "root")
    for role, online_role in (
        ("targets", DIRECTOR_TARGETS),
        ("snapshot", DIRECTOR_SNAPSHOT),
        ("timestamp", DIRECTOR_TIMESTAMP),
    ):
        root.add_key(keys.key(online_role), role)
    metadata = Metadata(root)
    metadata.sign(root_signer)
    return metadata


@pytest.fixture
def director(tmp_path: Path, keys: OnlineKeys) -> Iterator[DirectorRepository]:
    served = tmp_path / "served"
    (served / "metadata").mkdir(parents=True)
    (served / "targets").mkdir()
    root_bytes = to_bytes(_director_root(keys))
    (served / "metadata" / "1.root.json").write_bytes(root_bytes)

    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metadata/"
        yield DirectorRepository(served / "metadata", url, root_bytes)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_device_refreshes_and_finds_its_target_with_the_custom_fields(
    keys: OnlineKeys, director: DirectorRepository, tmp_path: Path
) -> None:
    metadata = build_device_metadata(keys, FIRMWARE_1, None, now=_now())
    director.publish(metadata)

    updater = director.updater(tmp_path / "device")
    updater.refresh()
    info = updater.get_targetinfo(FIRMWARE_1.target_path)

    assert info is not None
    assert info.length == 1024
    assert info.hashes == {"sha256": "a" * 64}
    assert info.custom == {
        "fleetkeeper": {"device_id": "dev-0001", "device_type": "raspberrypi4", "release_counter": 10}
    }
    assert (metadata.targets.signed.version, metadata.snapshot.signed.version) == (1, 1)
    assert metadata.timestamp.signed.version == 1


def test_a_new_assignment_reaches_the_device_with_higher_versions(
    keys: OnlineKeys, director: DirectorRepository, tmp_path: Path
) -> None:
    first = build_device_metadata(keys, FIRMWARE_1, None, now=_now())
    director.publish(first)
    director.updater(tmp_path / "device").refresh()

    second = build_device_metadata(keys, FIRMWARE_2, first, now=_now())
    director.publish(second)
    updater = director.updater(tmp_path / "device")  # same local cache: rollback checks apply
    updater.refresh()

    assert updater.get_targetinfo(FIRMWARE_1.target_path) is None
    info = updater.get_targetinfo(FIRMWARE_2.target_path)
    assert info is not None
    assert info.custom["fleetkeeper"]["release_counter"] == 11
    assert second.targets.signed.version == first.targets.signed.version + 1
    assert second.snapshot.signed.version == first.snapshot.signed.version + 1
    assert second.timestamp.signed.version == first.timestamp.signed.version + 1
    assert second.snapshot.signed.meta["targets.json"].version == second.targets.signed.version
    assert second.timestamp.signed.snapshot_meta.version == second.snapshot.signed.version


def test_no_assignment_lists_nothing(keys: OnlineKeys, director: DirectorRepository, tmp_path: Path) -> None:
    first = build_device_metadata(keys, FIRMWARE_1, None, now=_now())
    cleared = build_device_metadata(keys, None, first, now=_now())
    director.publish(cleared)

    updater = director.updater(tmp_path / "device")
    updater.refresh()

    assert updater.get_targetinfo(FIRMWARE_1.target_path) is None
    assert cleared.targets.signed.targets == {}
    assert assignment_of(cleared.targets) is None
    assert cleared.targets.signed.version == 2


def test_an_expired_timestamp_is_refused(
    keys: OnlineKeys, director: DirectorRepository, tmp_path: Path
) -> None:
    # Targets and snapshot (7 days) are still valid; only the timestamp (1 day) has run out.
    director.publish(build_device_metadata(keys, FIRMWARE_1, None, now=_now() - timedelta(days=2)))

    with pytest.raises(ExpiredMetadataError, match="timestamp"):
        director.updater(tmp_path / "device").refresh()


@pytest.mark.parametrize("foreign_role", [DIRECTOR_TARGETS, DIRECTOR_SNAPSHOT, DIRECTOR_TIMESTAMP])
def test_a_signature_by_another_key_is_refused(
    keys: OnlineKeys, director: DirectorRepository, tmp_path: Path, foreign_role: str
) -> None:
    others = load_or_create_online_keys(tmp_path / "other-keys")
    mixed = OnlineKeys(
        {role: (others if role == foreign_role else keys).signer(role) for role in ONLINE_ROLES}
    )
    director.publish(build_device_metadata(mixed, FIRMWARE_1, None, now=_now()))

    with pytest.raises(UnsignedMetadataError):
        director.updater(tmp_path / "device").refresh()


def test_an_unchanged_assignment_returns_the_previous_metadata(keys: OnlineKeys) -> None:
    first = build_device_metadata(keys, FIRMWARE_1, None, now=_now())
    same = replace(FIRMWARE_1, hashes=dict(FIRMWARE_1.hashes))

    assert build_device_metadata(keys, same, first, now=_now() + timedelta(hours=1)) is first
    nothing = build_device_metadata(keys, None, None, now=_now())
    assert build_device_metadata(keys, None, nothing, now=_now()) is nothing


def test_refresh_timestamp_acts_only_when_due(
    keys: OnlineKeys, director: DirectorRepository, tmp_path: Path
) -> None:
    start = _now()
    first = build_device_metadata(keys, FIRMWARE_1, None, now=start)
    director.publish(first)
    director.updater(tmp_path / "device").refresh()

    assert refresh_timestamp(keys, first, now=start + timedelta(hours=11)) is None
    assert refresh_timestamp(keys, first, now=start, refresh_before=timedelta(hours=23)) is None

    refreshed = refresh_timestamp(keys, first, now=start + timedelta(hours=13))
    assert refreshed is not None
    assert refreshed.timestamp.signed.version == 2
    assert refreshed.timestamp.signed.expires == (start + timedelta(hours=13, days=1)).replace(microsecond=0)
    assert refreshed.snapshot is first.snapshot
    assert refreshed.targets is first.targets
    assert refresh_timestamp(keys, first, now=start, refresh_before=timedelta(days=1)) is not None

    director.publish(refreshed)
    updater = director.updater(tmp_path / "device")
    updater.refresh()
    assert updater.get_targetinfo(FIRMWARE_1.target_path) is not None


def test_refresh_device_metadata_resigns_what_nears_expiry(
    keys: OnlineKeys, director: DirectorRepository, tmp_path: Path
) -> None:
    now = _now()
    old = build_device_metadata(keys, FIRMWARE_1, None, now=now - timedelta(days=4))

    assert refresh_device_metadata(keys, old, now=now - timedelta(days=4) + timedelta(hours=1)) is None

    only_timestamp = refresh_device_metadata(keys, old, now=now - timedelta(days=3))
    assert only_timestamp is not None
    assert only_timestamp.targets is old.targets
    assert only_timestamp.snapshot is old.snapshot
    assert only_timestamp.timestamp.signed.version == 2

    # Four days into seven: less than half left, so targets, snapshot and timestamp all move on.
    refreshed = refresh_device_metadata(keys, old, now=now)
    assert refreshed is not None
    assert refreshed.targets.signed.version == 2
    assert refreshed.snapshot.signed.version == 2
    assert refreshed.timestamp.signed.version == 2
    assert assignment_of(refreshed.targets) == FIRMWARE_1

    director.publish(refreshed)
    updater = director.updater(tmp_path / "device")
    updater.refresh()
    assert updater.get_targetinfo(FIRMWARE_1.target_path) is not None


def test_only_the_snapshot_is_resigned_when_only_it_is_due(keys: OnlineKeys) -> None:
    now = _now()
    old = build_device_metadata(
        keys, FIRMWARE_1, None, now=now, targets_expiry=timedelta(days=30), snapshot_expiry=timedelta(days=2)
    )
    refreshed = refresh_device_metadata(
        keys, old, now=now + timedelta(days=1, hours=1), targets_expiry=timedelta(days=30)
    )
    assert refreshed is not None
    assert refreshed.targets is old.targets
    assert refreshed.snapshot.signed.version == 2
    assert refreshed.timestamp.signed.version == 2


def test_stored_bytes_read_back_to_the_same_served_bytes(keys: OnlineKeys) -> None:
    metadata = build_device_metadata(keys, FIRMWARE_1, None, now=_now())
    again = DeviceMetadata.from_bytes(
        metadata.targets_bytes(), metadata.snapshot_bytes(), metadata.timestamp_bytes()
    )

    assert again.files() == metadata.files()
    assert set(metadata.files()) == {"1.targets.json", "1.snapshot.json", "timestamp.json"}
    assert assignment_of(again.targets) == FIRMWARE_1
    # The server would only re-serve the same bytes: an unchanged assignment leaves the reloaded copy as is.
    assert build_device_metadata(keys, FIRMWARE_1, again, now=_now()) is again


def test_a_naive_time_is_refused(keys: OnlineKeys) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_device_metadata(keys, FIRMWARE_1, None, now=datetime.now())  # noqa: DTZ005


def test_targets_with_two_entries_are_not_an_assignment(keys: OnlineKeys) -> None:
    one = build_device_metadata(keys, FIRMWARE_1, None, now=_now()).targets
    two = build_device_metadata(keys, FIRMWARE_2, None, now=_now()).targets
    one.signed.targets.update(two.signed.targets)

    with pytest.raises(ValueError, match="2 targets"):
        assignment_of(one)

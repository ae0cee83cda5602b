"""What a device's inventory says it runs: the release named under the inventory keys
`release.name` and `release.version` (docs/device-api.md), indexed as device attributes. A
deployment marks such a device `already_installed` instead of sending it the release again."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import aliased

from fleetkeeper.devices.models import DeviceAttribute
from fleetkeeper.releases.models import Release

RELEASE_NAME_KEY = "release.name"
RELEASE_VERSION_KEY = "release.version"
# The detail of a device's row marked already_installed.
ALREADY_INSTALLED = "the device's inventory reports this release as installed"


def devices_running(release: Release) -> Select[Any]:
    """Ids of the devices whose inventory names this release as the one installed."""
    version = aliased(DeviceAttribute)
    return (
        select(DeviceAttribute.device_id)
        .join(
            version,
            (version.device_id == DeviceAttribute.device_id)
            & (version.key == RELEASE_VERSION_KEY)
            & (version.value_text == release.version),
        )
        .where(DeviceAttribute.key == RELEASE_NAME_KEY, DeviceAttribute.value_text == release.name)
    )

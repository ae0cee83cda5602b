"""A device's identity as it claims it at enrollment — device type, serial, MAC, attributes —
checked once, when it arrives."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleetkeeper.core.errors import ProblemError

_DEVICE_TYPE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SERIAL = re.compile(r"^[\x21-\x7e]{1,128}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_IDENTITY_ATTRIBUTES = 50


@dataclass(frozen=True)
class Identity:
    device_type: str
    serial: str | None
    mac: str | None
    attributes: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "device_type": self.device_type,
            "serial": self.serial,
            "mac": self.mac,
            "attributes": self.attributes,
        }

    def indexed_attributes(self) -> dict[str, Any]:
        """The `identity.*` attributes that filters read."""
        flat: dict[str, Any] = {f"identity.{key}": value for key, value in self.attributes.items()}
        if self.serial:
            flat["identity.serial"] = self.serial
        if self.mac:
            flat["identity.mac"] = self.mac
        return flat


def _invalid(detail: str) -> ProblemError:
    return ProblemError(detail, code="invalid_identity", status=422)


def check_identity(raw: Any) -> Identity:
    if not isinstance(raw, dict):
        raise _invalid("identity is an object")
    device_type, serial, mac = raw.get("device_type"), raw.get("serial"), raw.get("mac")
    attributes = raw.get("attributes") or {}
    if not isinstance(device_type, str) or not _DEVICE_TYPE.match(device_type):
        raise _invalid("device_type is 1-64 of A-Z a-z 0-9 . _ -")
    if serial is not None and (not isinstance(serial, str) or not _SERIAL.match(serial)):
        raise _invalid("serial is 1-128 printable characters without spaces")
    if mac is not None and (not isinstance(mac, str) or not _MAC.match(mac)):
        raise _invalid("mac is six hexadecimal pairs")
    if not isinstance(attributes, dict) or len(attributes) > MAX_IDENTITY_ATTRIBUTES:
        raise _invalid(f"attributes is an object of at most {MAX_IDENTITY_ATTRIBUTES} entries")
    for key, value in attributes.items():
        if not _ATTRIBUTE_KEY.match(key) or not isinstance(value, str) or len(value) > 256:
            raise _invalid(f"attribute {key[:70]!r}: keys 1-64 of A-Z a-z 0-9 _ -, string values up to 256")
    return Identity(device_type, serial, mac.lower() if mac else None, dict(attributes))

"""A device's identity as it claims it at enrollment — device type, serial, MAC, attributes —
checked when it arrives, and read against the identity an operator registered ahead for its key.

A pre-authorization is authoritative: the identity is what dynamic groups used as scopes read, so
the device may confirm it but not change it. A claimed value that differs from a registered one
refuses the enrollment; a claimed field the operator did not register is not stored. See
docs/devices.md, "Enrollment"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleetkeeper.core.errors import ProblemError
from fleetkeeper.devices.models import Device

_DEVICE_TYPE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
_SERIAL = re.compile(r"^[\x21-\x7e]{1,128}\Z")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}\Z")
_ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
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
    if not isinstance(device_type, str) or not _DEVICE_TYPE.fullmatch(device_type):
        raise _invalid("device_type is 1-64 of A-Z a-z 0-9 . _ -")
    if serial is not None and (not isinstance(serial, str) or not _SERIAL.fullmatch(serial)):
        raise _invalid("serial is 1-128 printable characters without spaces")
    if mac is not None and (not isinstance(mac, str) or not _MAC.fullmatch(mac)):
        raise _invalid("mac is six hexadecimal pairs")
    if not isinstance(attributes, dict) or len(attributes) > MAX_IDENTITY_ATTRIBUTES:
        raise _invalid(f"attributes is an object of at most {MAX_IDENTITY_ATTRIBUTES} entries")
    for key, value in attributes.items():
        if not _ATTRIBUTE_KEY.fullmatch(key) or not isinstance(value, str) or len(value) > 256:
            raise _invalid(f"attribute {key[:70]!r}: keys 1-64 of A-Z a-z 0-9 _ -, string values up to 256")
    return Identity(device_type, serial, normalised_mac(mac) if mac else None, dict(attributes))


@dataclass(frozen=True)
class Comparison:
    """A claimed identity read against a registered one, field by field as filters name them
    (`device_type`, `serial`, `mac`, `identity.<key>`): names only, never the values."""

    differing: tuple[str, ...]  # claimed otherwise than registered: the enrollment is refused
    ignored: tuple[str, ...]  # claimed but not registered: not stored


def registered_identity(device: Device) -> Identity:
    """The identity an operator registered for a pre-authorized device."""
    attributes = device.identity.get("attributes") or {}
    return Identity(device.device_type, device.serial, device.mac, dict(attributes))


def compare(registered: Identity, claimed: Identity) -> Comparison:
    """The device type and a registered serial must be claimed as registered; a MAC or an attribute
    the device claims must equal the registered one, or is ignored when none was registered. What
    the device leaves out of its claim keeps its registered value."""
    differing: list[str] = []
    ignored: list[str] = []
    if claimed.device_type != registered.device_type:
        differing.append("device_type")
    if registered.serial is not None and claimed.serial != registered.serial:
        differing.append("serial")
    elif registered.serial is None and claimed.serial is not None:
        ignored.append("serial")
    if claimed.mac is not None:
        if registered.mac is None:
            ignored.append("mac")
        elif normalised_mac(claimed.mac) != normalised_mac(registered.mac):
            differing.append("mac")
    for key, value in sorted(claimed.attributes.items()):
        if key not in registered.attributes:
            ignored.append(f"identity.{key}")
        elif registered.attributes[key] != value:
            differing.append(f"identity.{key}")
    return Comparison(tuple(differing), tuple(sorted(ignored)))


def is_mac(value: str) -> bool:
    return _MAC.fullmatch(value) is not None


def normalised_mac(mac: str) -> str:
    """A MAC as it is stored and compared: lower case, colon-separated. `check_identity` takes
    both separators and either case, so that an operator's DC-A6-… is the agent's dc:a6:… and the
    same device (migration 0016 brought the values stored before to this form)."""
    return mac.lower().replace("-", ":")

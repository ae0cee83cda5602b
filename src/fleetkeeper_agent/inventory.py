"""What the device reports about itself (`PUT /device/v1/inventory`), gathered with the stdlib only and
always inside the contract's limits: 64 KiB, 5 levels, 1,000 values, keys of A-Z a-z 0-9 _ - up to 64
characters, strings up to 1,024 characters. What does not fit is trimmed and said in a log line, never
sent for the server to refuse: a device that cannot report is worse than one that reports less.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetkeeper_agent import __version__

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024
MAX_DEPTH = 5  # the top-level object is level 1
MAX_VALUES = 1000  # every value below the top-level object, containers included
MAX_KEY_LENGTH = 64
MAX_STRING_LENGTH = 1024
KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")
COMMAND_TIMEOUT_SECONDS = 20


def collect_inventory(
    device_type: str | None = None,
    attributes: Mapping[str, str] | None = None,
    release: Mapping[str, str | int] | None = None,
) -> dict[str, Any]:
    """The known keys of the device API, read from the running system, within the limits.

    Keys come in order of importance: when the document must be cut, the software list (last) goes first.
    """
    document: dict[str, Any] = {}
    if device_type:
        document["device_type"] = device_type
    document["agent_version"] = __version__
    if release:
        # The release the agent installed and committed (update.json), so that deployments know it.
        document["release"] = dict(release)
    if os_info := operating_system():
        document["os"] = os_info
    document["kernel"] = os.uname().release
    if attributes:
        document["attributes"] = dict(attributes)
    if network := network_interfaces():
        document["network"] = network
    document["software"] = {
        "fleetkeeper-agent": __version__,
        "python": platform.python_version(),
        **installed_packages(),
    }
    return limit_inventory(document)


def operating_system() -> dict[str, str]:
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return {"name": platform.system()}
    info = {"name": release.get("NAME", platform.system())}
    if "VERSION_ID" in release:
        info["version"] = release["VERSION_ID"]
    return info


def network_interfaces(sys_net: Path = Path("/sys/class/net")) -> dict[str, dict[str, Any]]:
    """Interfaces other than loopback: MAC from sysfs, addresses from `ip -j addr` when it exists."""
    interfaces: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError):
        for entry in sorted(sys_net.iterdir()):
            if entry.name == "lo":
                continue
            with contextlib.suppress(OSError):
                mac = (entry / "address").read_text().strip()
                if mac and mac != "00:00:00:00:00:00":
                    interfaces[entry.name] = {"mac": mac}
    for name, addresses in ip_addresses().items():
        if name != "lo" and addresses:
            interfaces.setdefault(name, {})["addresses"] = addresses
    return interfaces


def ip_addresses() -> dict[str, list[str]]:
    output = _run("ip", "-j", "addr")
    if output is None:
        return {}
    try:
        links = json.loads(output)
    except ValueError:
        return {}
    addresses: dict[str, list[str]] = {}
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict) or not isinstance(link.get("ifname"), str):
            continue
        found = [
            f"{info['local']}/{info['prefixlen']}"
            for info in link.get("addr_info") or []
            if isinstance(info, dict) and "local" in info and "prefixlen" in info
        ]
        addresses[link["ifname"]] = found
    return addresses


def installed_packages() -> dict[str, str]:
    """Installed Debian packages and their versions, when dpkg is there; at most MAX_VALUES of them.

    Package names may hold `.`, `+` and `:`, which inventory keys may not (a dot would read as a level
    of the dotted path the server filters by): they become `_`, as in `libstdc__6`.
    """
    output = _run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n")
    if output is None:
        return {}
    packages: dict[str, str] = {}
    for line in output.splitlines():
        status, _, rest = line.partition("\t")
        name, _, version = rest.partition("\t")
        # The second letter of the status is the package's state; "i" is installed (not just configured
        # files left behind by a removal).
        key = inventory_key(name)
        if len(status) >= 2 and status[1] == "i" and key and version:
            packages.setdefault(key, version)
            if len(packages) >= MAX_VALUES:
                break
    return packages


def _run(program: str, *args: str) -> str | None:
    path = shutil.which(program)
    if path is None:
        return None
    try:
        # Fixed programs and arguments, no shell: nothing from outside reaches the command line.
        result = subprocess.run(  # noqa: S603
            [path, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", program, exc)
        return None
    return result.stdout if result.returncode == 0 else None


# --- the limits ---------------------------------------------------------------------------------


def encoded_size(document: Mapping[str, Any]) -> int:
    """The size of the body as the client sends it (compact JSON, ASCII escapes)."""
    return len(json.dumps(document, separators=(",", ":")).encode())


def limit_inventory(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `document` within every limit of the contract; what was cut is logged as a warning."""
    limiter = _Limiter()
    limited = limiter.mapping(document, depth=1)
    size = encoded_size(limited)
    dropped_for_size = 0
    while size > MAX_BYTES:
        # Popping from the end keeps the important keys (first in the document) and costs one encode
        # per round rather than one per entry.
        excess = size - MAX_BYTES
        while excess > 0:
            removed = _pop_last(limited)
            if removed == 0:
                break
            dropped_for_size += 1
            excess -= removed
        new_size = encoded_size(limited)
        if new_size == size:
            break
        size = new_size
    if dropped_for_size:
        limiter.note(f"dropped {dropped_for_size} values to stay under {MAX_BYTES} bytes")
    if limiter.notes:
        log.warning("inventory trimmed to the device API's limits: %s", "; ".join(limiter.notes))
    return limited


class _Limiter:
    def __init__(self) -> None:
        self.values = 0
        self.counts: dict[str, int] = {}
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def mapping(self, source: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for raw_key, raw_value in source.items():
            key = inventory_key(raw_key)
            if key is None or key in result:
                self.count("keys dropped (not valid, or the same as another once made valid)")
                continue
            if key != raw_key:
                self.count("keys renamed to A-Z a-z 0-9 _ -")
            value = self.value(raw_value, depth)
            if value is not _SKIP:
                result[key] = value
        if depth == 1:
            self.notes.extend(f"{number} {what}" for what, number in self.counts.items())
        return result

    def value(self, value: Any, depth: int) -> Any:
        """`depth` is that of the container holding `value`."""
        if self.values >= MAX_VALUES:
            self.count(f"values dropped over the {MAX_VALUES} limit")
            return _SKIP
        if isinstance(value, Mapping | list | tuple):
            if depth + 1 > MAX_DEPTH:
                self.count(f"containers dropped deeper than {MAX_DEPTH} levels")
                return _SKIP
            self.values += 1
            if isinstance(value, Mapping):
                return self.mapping(value, depth + 1)
            items = (self.value(item, depth + 1) for item in value)
            return [item for item in items if item is not _SKIP]
        if isinstance(value, float) and not math.isfinite(value):
            self.count("non-finite numbers dropped")
            return _SKIP
        if value is not None and not isinstance(value, str | int | float):
            value = str(value)
        if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
            self.count(f"strings cut to {MAX_STRING_LENGTH} characters")
            value = value[:MAX_STRING_LENGTH]
        self.values += 1
        return value


_SKIP = object()


def inventory_key(raw: object) -> str | None:
    """`raw` made into a valid inventory key, or None when nothing of it is left."""
    if not isinstance(raw, str):
        return None
    key = _NOT_KEY_CHARACTERS.sub("_", raw)[:MAX_KEY_LENGTH]
    return key if key and KEY.fullmatch(key) else None


def _pop_last(container: dict[str, Any] | list[Any]) -> int:
    """Remove the last scalar (or empty container) of the document; returns about how many bytes that
    saves (its encoding and a separator), 0 when there is nothing left."""
    if not container:
        return 0
    if isinstance(container, dict):
        key = next(reversed(container))
        value = container[key]
        if isinstance(value, dict | list) and value:
            return _pop_last(value)
        del container[key]
        return len(json.dumps({key: value}, separators=(",", ":"))) - 1
    value = container[-1]
    if isinstance(value, dict | list) and value:
        return _pop_last(value)
    container.pop()
    return len(json.dumps(value, separators=(",", ":"))) + 1

"""The state directory: one sub-directory per simulated device, kept between runs so that a second run
reuses the devices (their keys, certificates, installed release) instead of enrolling them again.

    <state-dir>/sim.json                   the fleet CA it belongs to, the serial prefix
    <state-dir>/devices/000042/            the agent's own files (keystore.FileKeyStore, identity.json)
    <state-dir>/devices/000042/sim.json    what the simulated device installed, its report sequence
    <state-dir>/pending/000000/            a device that enrolls without the token (--pending)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetkeeper_agent.client import check_server_url
from fleetkeeper_agent.errors import AgentError


class SimError(Exception):
    """A reason to stop the whole run, said in one line."""


def loopback_target(server_url: str) -> tuple[str, int]:
    """(host, port) of a device listener on this machine; anything else is refused: the simulator is a
    load generator, and pointing one at somebody else's server is not something to do by a typo."""
    try:
        url = check_server_url(server_url)
    except AgentError as exc:
        raise SimError(exc.message) from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, parts.port or 443)}
    except socket.gaierror as exc:
        raise SimError(f"{host}: cannot resolve ({exc.strerror})") from None
    if not addresses or not all(
        ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses
    ):
        raise SimError(
            f"{host} is not a loopback address ({', '.join(sorted(addresses))}): "
            "the simulator only targets a server on this machine"
        )
    return host, parts.port or 443


@dataclass
class Progress:
    """A simulated device's memory of its updates (the agent's update.json, reduced)."""

    installed: dict[str, Any] | None = None  # {"name", "version", "release_counter", "target_path"}
    seq: int = 0
    # An update under way: {"deployment_id", "target_path", "step", "release", "version", "counter"}
    update: dict[str, Any] | None = None
    rejected: bool = False

    FILE = "sim.json"

    @classmethod
    def load(cls, directory: Path) -> Progress:
        try:
            raw = json.loads((directory / cls.FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise SimError(f"{directory / cls.FILE}: {exc}") from None
        return cls(
            installed=raw.get("installed"),
            seq=int(raw.get("seq", 0)),
            update=raw.get("update"),
            rejected=bool(raw.get("rejected", False)),
        )

    def save(self, directory: Path) -> None:
        # No fsync: a lost write costs a simulated device a repeated report, which the server ignores.
        temporary = directory / (self.FILE + ".tmp")
        temporary.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(temporary, directory / self.FILE)


@dataclass
class StateDir:
    root: Path
    ca_pem: bytes
    prefix: str = field(init=False)

    FILE = "sim.json"

    def __post_init__(self) -> None:
        """Creates the directory, or checks that it was made for the same fleet CA."""
        fingerprint = hashlib.sha256(self.ca_pem).hexdigest()
        meta_path = self.root / self.FILE
        if meta_path.exists():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("ca_sha256") != fingerprint:
                raise SimError(
                    f"{self.root} holds devices of another fleet CA (another server): "
                    "give a new --state-dir, or delete this one"
                )
            self.prefix = str(meta["prefix"])
            return
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prefix = secrets.token_hex(3)
        meta_path.write_text(json.dumps({"ca_sha256": fingerprint, "prefix": self.prefix}) + "\n")

    def device_dir(self, index: int, *, pending: bool = False) -> Path:
        """Devices that enroll without the token (left pending) are numbered apart, so that a run with
        another --devices count finds the same ones."""
        return self.root / ("pending" if pending else "devices") / f"{index:06d}"

    def serial(self, index: int, *, pending: bool = False) -> str:
        return f"sim-{self.prefix}-{'p' if pending else ''}{index:06d}"

"""Inventory: the known keys from this machine, and never over the contract's limits."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from fleetkeeper_agent import __version__, inventory
from fleetkeeper_agent.inventory import collect_inventory, limit_inventory

KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def assert_within_limits(document: dict[str, Any]) -> None:
    """The contract's limits, checked independently of the code under test."""
    encoded = json.dumps(document, separators=(",", ":")).encode()
    assert len(encoded) <= 64 * 1024
    assert json.loads(encoded) == document  # plain JSON, nothing lost on the way
    values = 0

    def walk(node: Any, depth: int) -> None:
        nonlocal values
        assert depth <= 5
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in children:
            if isinstance(node, dict):
                assert KEY.fullmatch(key), key
            values += 1
            if isinstance(child, dict | list):
                walk(child, depth + 1)
            elif isinstance(child, str):
                assert len(child) <= 1024

    walk(document, 1)
    assert values <= 1000


def test_collects_the_known_keys_of_this_system() -> None:
    document = collect_inventory("rpi4", {"site": "plant-3"})
    assert_within_limits(document)
    assert document["device_type"] == "rpi4"
    assert document["agent_version"] == __version__
    assert document["attributes"] == {"site": "plant-3"}
    assert document["kernel"]
    assert document["os"]["name"]
    assert document["software"]["fleetkeeper-agent"] == __version__
    for interface in document.get("network", {}).values():
        assert set(interface) <= {"mac", "addresses"}


def test_without_device_type_or_attributes_those_keys_are_left_out() -> None:
    document = collect_inventory()
    assert "device_type" not in document
    assert "attributes" not in document


def test_a_huge_package_list_is_cut_and_the_rest_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    packages = {f"package-{n:05d}": "1.0." + "9" * 200 for n in range(5000)}
    monkeypatch.setattr(inventory, "installed_packages", lambda: packages)
    with caplog.at_level(logging.WARNING, logger="fleetkeeper_agent.inventory"):
        document = collect_inventory("rpi4", {"site": "plant-3"})
    assert_within_limits(document)
    # What matters most survives; the software list, last, took the cut.
    assert document["device_type"] == "rpi4"
    assert document["attributes"] == {"site": "plant-3"}
    assert document["os"]
    assert 0 < len(document["software"]) < 5000
    assert "inventory trimmed" in caplog.text


def test_oversized_values_are_trimmed(caplog: pytest.LogCaptureFixture) -> None:
    nested: dict[str, Any] = {"leaf": "x"}
    for _ in range(8):
        nested = {"deeper": nested}
    source: dict[str, Any] = {
        "device_type": "rpi4",
        "long": "y" * 5000,
        "bad.key": "dots are paths",
        "ok_key": 1,
        "k" * 100: "long key",
        "nested": nested,
        "list": [{"a": [1, 2, {"b": [3]}]}],
        "many": {f"v{n}": n for n in range(3000)},
        "nan": float("nan"),
    }
    with caplog.at_level(logging.WARNING, logger="fleetkeeper_agent.inventory"):
        document = limit_inventory(source)
    assert_within_limits(document)
    assert document["long"] == "y" * 1024
    assert document["bad_key"] == "dots are paths"
    assert document["k" * 64] == "long key"
    assert "nan" not in document
    assert document["ok_key"] == 1
    assert "strings cut" in caplog.text
    assert "values dropped over the 1000 limit" in caplog.text
    assert "deeper than 5 levels" in caplog.text


def test_big_strings_are_cut_to_64_kib() -> None:
    source = {f"attr{n}": "z" * 1024 for n in range(200)}
    document = limit_inventory(source)
    assert_within_limits(document)
    assert 50 < len(document) < 200
    assert list(document) == [f"attr{n}" for n in range(len(document))]  # the first ones kept


def test_non_ascii_is_counted_as_sent() -> None:
    # The client escapes non-ASCII: six bytes per character, which the size limit must count.
    document = limit_inventory({f"a{n}": "é" * 1024 for n in range(20)})
    assert_within_limits(document)


def test_within_limits_is_left_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    source = {
        "device_type": "rpi4",
        "os": {"name": "Debian", "version": "12"},
        "network": {"eth0": {"addresses": ["10.0.0.1/24"]}},
    }
    with caplog.at_level(logging.WARNING):
        assert limit_inventory(source) == source
    assert caplog.text == ""


def test_package_names_become_valid_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    output = "ii \tlibstdc++6\t12.2.0-14\nrc \told-package\t1.0\nii \tpython3.11\t3.11.2-6\n"
    monkeypatch.setattr(inventory, "_run", lambda *args: output)
    assert inventory.installed_packages() == {"libstdc__6": "12.2.0-14", "python3_11": "3.11.2-6"}


def test_ip_output_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    output = json.dumps(
        [
            {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "eth0", "addr_info": [{"local": "10.0.3.17", "prefixlen": 24}]},
        ]
    )
    monkeypatch.setattr(inventory, "_run", lambda *args: output)
    assert inventory.ip_addresses() == {"lo": ["127.0.0.1/8"], "eth0": ["10.0.3.17/24"]}


def test_missing_tools_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory.shutil, "which", lambda name: None)
    assert inventory.installed_packages() == {}
    assert inventory.ip_addresses() == {}

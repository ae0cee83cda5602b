"""Every benchmark program imports: they reuse the suite's helpers, which move (a benchmark that
cannot start is only found by `make bench`, which the suite does not run)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(info.name for info in pkgutil.iter_modules(bench.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_the_benchmark_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")

"""Counts, latencies and errors per request kind, mergeable across worker processes."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Enough samples for a stable p99 while a long run's memory stays bounded (8 bytes each).
MAX_SAMPLES_PER_KIND = 500_000


@dataclass
class KindStats:
    count: int = 0
    errors: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def add(self, seconds: float) -> None:
        self.count += 1
        if len(self.latencies) < MAX_SAMPLES_PER_KIND:
            self.latencies.append(seconds)
        else:  # keep every n-th sample: thinner, still spread over the whole run
            self.latencies[self.count % MAX_SAMPLES_PER_KIND] = seconds


@dataclass
class Stats:
    kinds: dict[str, KindStats] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # "<kind>: <reason>" -> how many
    events: Counter[str] = field(default_factory=Counter)  # what the devices did: enrolled, installed, …

    def kind(self, name: str) -> KindStats:
        found = self.kinds.get(name)
        if found is None:
            found = self.kinds[name] = KindStats()
        return found

    def ok(self, kind: str, seconds: float) -> None:
        self.kind(kind).add(seconds)

    def error(self, kind: str, reason: str) -> None:
        self.kind(kind).errors += 1
        self.errors[f"{kind}: {reason}"] += 1

    def event(self, name: str, count: int = 1) -> None:
        self.events[name] += count

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: Stats) -> None:
        for name, theirs in other.kinds.items():
            mine = self.kind(name)
            mine.count += theirs.count
            mine.errors += theirs.errors
            mine.latencies.extend(theirs.latencies[: MAX_SAMPLES_PER_KIND - len(mine.latencies)])
        self.errors.update(other.errors)
        self.events.update(other.events)

    def to_wire(self) -> dict[str, Any]:
        """A picklable form for the parent process."""
        return {
            "kinds": {name: (k.count, k.errors, k.latencies.tobytes()) for name, k in self.kinds.items()},
            "errors": dict(self.errors),
            "events": dict(self.events),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Stats:
        stats = cls(errors=Counter(wire["errors"]), events=Counter(wire["events"]))
        for name, (count, errors, raw) in wire["kinds"].items():
            latencies = array("d")
            latencies.frombytes(raw)
            stats.kinds[name] = KindStats(count, errors, latencies)
        return stats

    def report(self, seconds: float) -> dict[str, Any]:
        """Per kind: requests, rate, p50/p95/p99 in ms, errors; the totals; the devices' events."""
        kinds = {}
        for name in sorted(self.kinds):
            k = self.kinds[name]
            ordered = sorted(k.latencies)
            kinds[name] = {
                "requests": k.count,
                "per_s": round(k.count / seconds, 1) if seconds > 0 else None,
                "p50_ms": _percentile_ms(ordered, 0.50),
                "p95_ms": _percentile_ms(ordered, 0.95),
                "p99_ms": _percentile_ms(ordered, 0.99),
                "errors": k.errors,
            }
        total = sum(k.count for k in self.kinds.values())
        return {
            "duration_s": round(seconds, 1),
            "requests": total,
            "requests_per_s": round(total / seconds, 1) if seconds > 0 else None,
            "errors": self.error_count,
            "kinds": kinds,
            "events": dict(sorted(self.events.items())),
            "error_reasons": dict(self.errors.most_common(10)),
        }


def _percentile_ms(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    value = ordered[min(len(ordered) - 1, math.floor(fraction * len(ordered)))]
    return round(value * 1000, 2)

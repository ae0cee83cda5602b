"""What an operator asks of a deployment, checked: phases, failure thresholds, the target."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleetkeeper.core.errors import ProblemError

MAX_PHASES = 10
MAX_LISTED_DEVICES = 10_000
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def _invalid(code: str, detail: str) -> ProblemError:
    return ProblemError(detail, code=code, status=422)


@dataclass(frozen=True)
class Size:
    percent: int | None = None
    count: int | None = None

    def devices(self, total: int) -> int:
        """How many of `total` devices this size is (at least one of a non-empty target)."""
        if self.count is not None:
            return min(self.count, total)
        assert self.percent is not None
        return max(1, total * self.percent // 100) if total else 0

    def exceeded_by(self, failures: int, total: int) -> bool:
        if self.count is not None:
            return failures >= self.count
        assert self.percent is not None
        return total > 0 and failures * 100 >= self.percent * total


def _size(raw: Any, where: str, code: str) -> Size:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _invalid(code, f"{where}: give exactly one of percent or count")
    ((kind, value),) = raw.items()
    if kind == "percent" and isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100:
        return Size(percent=value)
    if kind == "count" and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return Size(count=value)
    raise _invalid(code, f"{where}: percent is 1-100, count at least 1")


@dataclass(frozen=True)
class Phase:
    size: Size
    advance: str  # auto | manual
    success_percent: int


def parse_phases(raw: Any) -> list[Phase]:
    """An ordered list of batches; none means one phase with every device. The last phase takes
    whatever the earlier ones left."""
    if raw is None or raw == []:
        return [Phase(Size(percent=100), "auto", 100)]
    if not isinstance(raw, list) or len(raw) > MAX_PHASES:
        raise _invalid("invalid_phases", f"phases is a list of at most {MAX_PHASES}")
    phases = []
    for index, item in enumerate(raw, start=1):
        if (
            not isinstance(item, dict)
            or not set(item) <= {"size", "advance", "success_percent"}
            or "size" not in item
        ):
            raise _invalid(
                "invalid_phases", f"phase {index}: size, and optionally advance and success_percent"
            )
        advance = item.get("advance", "auto")
        success = item.get("success_percent", 100)
        if advance not in ("auto", "manual"):
            raise _invalid("invalid_phases", f"phase {index}: advance is auto or manual")
        if not isinstance(success, int) or isinstance(success, bool) or not 1 <= success <= 100:
            raise _invalid("invalid_phases", f"phase {index}: success_percent is 1-100")
        phases.append(Phase(_size(item["size"], f"phase {index}", "invalid_phases"), advance, success))
    return phases


@dataclass(frozen=True)
class FailureThreshold:
    phase: Size | None
    overall: Size | None


def parse_failure_threshold(raw: Any) -> FailureThreshold:
    if raw is None or raw == {}:
        return FailureThreshold(None, None)
    if not isinstance(raw, dict) or not set(raw) <= {"phase", "overall"}:
        raise _invalid("invalid_threshold", "failure_threshold has phase and/or overall")
    return FailureThreshold(
        _size(raw["phase"], "failure_threshold.phase", "invalid_threshold") if "phase" in raw else None,
        _size(raw["overall"], "failure_threshold.overall", "invalid_threshold") if "overall" in raw else None,
    )


@dataclass(frozen=True)
class Target:
    devices: list[str] | None = None
    group: str | None = None
    live: bool = False  # a dynamic group kept live: devices joining later are included


def parse_target(raw: Any) -> Target:
    if not isinstance(raw, dict) or ("devices" in raw) == ("group" in raw):
        raise _invalid("invalid_target", 'target is {"devices": [...]} or {"group": name, "live": bool}')
    if "devices" in raw:
        devices = raw["devices"]
        if not isinstance(devices, list) or not all(isinstance(d, str) and len(d) <= 40 for d in devices):
            raise _invalid("invalid_target", "target.devices is a list of device ids")
        if not devices:
            raise _invalid("empty_target", "the target names no device")
        if len(devices) > MAX_LISTED_DEVICES:
            raise _invalid(
                "invalid_target", f"list at most {MAX_LISTED_DEVICES} devices; use a group for more"
            )
        if set(raw) != {"devices"}:
            raise _invalid("invalid_target", "a list of devices takes no other option")
        return Target(devices=sorted(set(devices)))
    group, live = raw["group"], raw.get("live", False)
    if (
        not isinstance(group, str)
        or not _GROUP.match(group)
        or not isinstance(live, bool)
        or not set(raw) <= {"group", "live"}
    ):
        raise _invalid("invalid_target", "target.group is a group name; live is true or false")
    return Target(group=group, live=live)


def phase_boundaries(phases: list[Phase], total: int) -> list[int]:
    """The cumulative device count at the end of each phase; the last is always `total`."""
    boundaries = []
    covered = 0
    for index, phase in enumerate(phases):
        covered = total if index == len(phases) - 1 else min(total, covered + phase.size.devices(total))
        boundaries.append(covered)
    return boundaries

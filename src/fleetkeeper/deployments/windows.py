"""Maintenance windows: when devices of a deployment may install (docs/deployments.md).

A window opens at each instant its five-field cron expression names on the wall clock of its IANA
zone and stays open for `duration` of elapsed time. Daylight-saving transitions follow croniter in
the zone, which means (tested in tests/deployments/test_windows.py):

- an opening in the hour skipped when clocks go forward (02:30 on the spring-forward day in
  Europe/Berlin) happens when the clock jumps, at 03:00 local, rather than being lost;
- an opening in the hour repeated when clocks go back (02:30 on the fall-back day) happens twice,
  once in each offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from fleetkeeper.core.errors import ProblemError

MIN_DURATION = timedelta(minutes=1)
MAX_DURATION = timedelta(days=7)
MAX_WINDOWS = 20
# next_open looks this far ahead; 366 days so a yearly window is always found, leap year or not.
HORIZON = timedelta(days=366)
# Far longer than any sensible expression; bounds what croniter is asked to parse from a request.
_MAX_CRON_LENGTH = 200
_FIELDS = {"cron", "duration_minutes", "timezone"}
# croniter's extensions `R` (random) and `H` (hashed) would give windows that differ between
# evaluations or need a seed; tokens are split out so names like THU, FRI, MAR stay accepted.
_TOKEN_SPLIT = re.compile(r"[,\-/()~#]")
# A fixed instant to check that an expression ever fires (31 February never does).
_PROBE = datetime(2024, 1, 1, tzinfo=UTC)


def _invalid(detail: str) -> ProblemError:
    return ProblemError(detail, code="invalid_window", status=422)


@dataclass(frozen=True)
class Window:
    """One maintenance window; constructing it validates it (ProblemError invalid_window)."""

    cron: str
    duration: timedelta
    timezone: str

    def __post_init__(self) -> None:
        _check_cron(self.cron)
        if not isinstance(self.timezone, str) or not self.timezone:
            raise _invalid("timezone must be an IANA time zone name")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            # ValueError: keys like "../x" that zoneinfo refuses to look up; OSError: a directory ("Europe").
            raise _invalid(f"unknown time zone {self.timezone!r}") from exc
        if not isinstance(self.duration, timedelta) or not MIN_DURATION <= self.duration <= MAX_DURATION:
            raise _invalid("duration must be between 1 minute and 7 days")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # zoneinfo caches instances, so this is cheap


def _check_cron(cron: object) -> None:
    if not isinstance(cron, str) or len(cron) > _MAX_CRON_LENGTH:
        raise _invalid("cron must be a five-field cron expression")
    fields = cron.split()
    # croniter also takes 6 and 7 fields (seconds, years) and @daily-style aliases; the contract is five.
    if len(fields) != 5:
        raise _invalid(f"cron {cron!r} must have exactly five fields (minute hour day month weekday)")
    for field in fields:
        if any(token.lower() in ("r", "h") for token in _TOKEN_SPLIT.split(field)):
            raise _invalid(f"cron {cron!r}: random (R) and hashed (H) fields are not supported")
    try:
        croniter(cron, _PROBE).get_next(datetime)
    except CroniterBadDateError as exc:
        raise _invalid(f"cron {cron!r} never opens") from exc
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise _invalid(f"cron {cron!r} is not a valid cron expression: {exc}") from exc


def _same_schedule(window: Window) -> tuple[str, str]:
    # Compared on croniter's expansion so "0 2 * * 1-5" and "0 2 * * MON-FRI" count as the same.
    return repr(croniter.expand(window.cron)), window.timezone


def parse_windows(raw: object) -> list[Window]:
    """Windows from a request body's `windows` (None or a list of objects); invalid_window otherwise."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid("windows must be a list")
    if len(raw) > MAX_WINDOWS:
        raise _invalid(f"at most {MAX_WINDOWS} windows")
    windows: list[Window] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(raw):
        window = _parse_one(index, item)
        key = _same_schedule(window)
        if key in seen:
            # Same cron and zone: the windows open together every time, so one of them is a mistake.
            raise _invalid(f"window {index} repeats the cron and time zone of an earlier window")
        seen.add(key)
        windows.append(window)
    return windows


def _parse_one(index: int, item: Any) -> Window:
    if not isinstance(item, dict) or set(item) != _FIELDS:
        raise _invalid(f"window {index} must be an object with exactly cron, duration_minutes, timezone")
    minutes = item["duration_minutes"]
    # bool is an int in Python; `true` as a duration is a mistake, not one minute.
    if not isinstance(minutes, int) or isinstance(minutes, bool):
        raise _invalid(f"window {index}: duration_minutes must be an integer")
    if not isinstance(item["cron"], str) or not isinstance(item["timezone"], str):
        raise _invalid(f"window {index}: cron and timezone must be strings")
    # Checked before building the timedelta, which overflows for absurd integers.
    if not 1 <= minutes <= MAX_DURATION // MIN_DURATION:
        raise _invalid(f"window {index}: duration must be between 1 minute and 7 days")
    try:
        return Window(cron=item["cron"], duration=timedelta(minutes=minutes), timezone=item["timezone"])
    except ProblemError as exc:
        raise _invalid(f"window {index}: {exc.detail}") from exc


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("an aware datetime is required")
    return at.astimezone(UTC)


def _next_opening(window: Window, after: datetime) -> datetime | None:
    """The first opening strictly after `after` (UTC), or None if croniter finds none."""
    try:
        opening = croniter(window.cron, after.astimezone(window.zone)).get_next(datetime)
    except CroniterBadDateError:
        return None
    assert isinstance(opening, datetime)
    return opening.astimezone(UTC)


def is_open(windows: Iterable[Window], at: datetime) -> bool:
    """Whether any window is open at `at` (aware); no windows means always open.

    A window is open from its opening (included) to opening + duration (excluded).
    """
    at = _utc(at)
    windows = list(windows)
    if not windows:
        return True
    for window in windows:
        # The earliest opening after at - duration is the one still open at `at`, if any is.
        opening = _next_opening(window, at - window.duration)
        if opening is not None and opening <= at:
            return True
    return False


def next_open(windows: Iterable[Window], after: datetime) -> datetime | None:
    """The next opening of any window strictly after `after` (aware), in UTC, within a year.

    None when no window opens within HORIZON, and also for no windows at all: they never open
    because they are never closed; callers ask is_open first.
    """
    after = _utc(after)
    limit = after + HORIZON
    openings = [opening for window in windows if (opening := _next_opening(window, after)) is not None]
    soonest = min(openings, default=None)
    return soonest if soonest is not None and soonest <= limit else None

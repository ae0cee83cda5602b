"""Maintenance windows against the contract in docs/deployments.md; pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fleetkeeper.core.errors import ProblemError
from fleetkeeper.deployments.windows import Window, is_open, next_open, parse_windows


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def window(cron: str, minutes: int, zone: str = "UTC") -> Window:
    return Window(cron=cron, duration=timedelta(minutes=minutes), timezone=zone)


def raw(cron: Any = "0 2 * * *", minutes: Any = 60, zone: Any = "UTC") -> dict[str, Any]:
    return {"cron": cron, "duration_minutes": minutes, "timezone": zone}


# 2025-01-06 is a Monday; Europe/Berlin springs forward on 2025-03-30 and falls back on 2025-10-26.


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2025, 1, 6, 1, 59, 59), False),
        (utc(2025, 1, 6, 2, 0), True),  # the exact opening is inside
        (utc(2025, 1, 6, 3, 0), True),
        (utc(2025, 1, 6, 3, 59, 59), True),
        (utc(2025, 1, 6, 4, 0), False),  # the exact closing instant is outside
        (utc(2025, 1, 6, 12, 0), False),
    ],
)
def test_open_from_the_opening_up_to_but_excluding_the_closing(at: datetime, expected: bool) -> None:
    assert is_open([window("0 2 * * *", 120)], at) is expected


def test_sub_second_instants_around_the_edges() -> None:
    windows = [window("0 2 * * *", 120)]
    assert not is_open(windows, utc(2025, 1, 6, 1, 59, 59) + timedelta(microseconds=999_999))
    assert is_open(windows, utc(2025, 1, 6, 2, 0) + timedelta(microseconds=1))
    assert is_open(windows, utc(2025, 1, 6, 4, 0) - timedelta(microseconds=1))


def test_no_windows_is_always_open_and_has_no_next_opening() -> None:
    assert is_open([], utc(2025, 1, 6, 13, 37))
    assert next_open([], utc(2025, 1, 6)) is None
    assert parse_windows(None) == []
    assert parse_windows([]) == []


def test_several_windows_combine() -> None:
    windows = [window("0 2 * * *", 60), window("0 14 * * *", 30)]
    assert is_open(windows, utc(2025, 1, 6, 2, 30))
    assert is_open(windows, utc(2025, 1, 6, 14, 15))
    assert not is_open(windows, utc(2025, 1, 6, 8, 0))
    assert not is_open(windows, utc(2025, 1, 6, 14, 30))
    # The soonest of the windows' next openings.
    assert next_open(windows, utc(2025, 1, 6, 3, 0)) == utc(2025, 1, 6, 14, 0)
    assert next_open(windows, utc(2025, 1, 6, 14, 5)) == utc(2025, 1, 7, 2, 0)


def test_weekdays_only() -> None:
    windows = [window("0 2 * * 1-5", 120)]
    assert is_open(windows, utc(2025, 1, 10, 2, 30))  # Friday
    assert not is_open(windows, utc(2025, 1, 11, 2, 30))  # Saturday
    assert not is_open(windows, utc(2025, 1, 12, 2, 30))  # Sunday
    assert is_open(windows, utc(2025, 1, 13, 2, 30))  # Monday
    # From Friday after closing, across the weekend, to Monday.
    assert next_open(windows, utc(2025, 1, 10, 4, 0)) == utc(2025, 1, 13, 2, 0)


def test_next_open_is_strictly_after_and_in_utc() -> None:
    windows = [window("0 2 * * *", 60)]
    assert next_open(windows, utc(2025, 1, 6, 1, 0)) == utc(2025, 1, 6, 2, 0)
    # At the opening itself (the window is open now) the next one is tomorrow's.
    assert next_open(windows, utc(2025, 1, 6, 2, 0)) == utc(2025, 1, 7, 2, 0)
    found = next_open(windows, utc(2025, 1, 6, 23, 0))
    assert found == utc(2025, 1, 7, 2, 0)
    assert found is not None
    assert found.tzinfo is UTC


def test_next_open_looks_a_year_ahead_only() -> None:
    leap_day = [window("0 0 29 2 *", 60)]
    assert next_open(leap_day, utc(2027, 3, 1)) == utc(2028, 2, 29)
    # After 29 February 2024 the next is 2028: beyond a year, so none.
    assert next_open(leap_day, utc(2024, 3, 1)) is None
    assert not is_open(leap_day, utc(2025, 2, 28, 0, 30))
    yearly = [window("0 0 1 1 *", 60)]
    assert next_open(yearly, utc(2025, 1, 1, 0, 0)) == utc(2026, 1, 1)


def test_a_window_crossing_midnight() -> None:
    windows = [window("0 23 * * 5", 180)]  # Friday 23:00 for three hours
    assert is_open(windows, utc(2025, 1, 10, 23, 30))
    assert is_open(windows, utc(2025, 1, 11, 1, 59))  # Saturday, still the Friday window
    assert not is_open(windows, utc(2025, 1, 11, 2, 0))
    assert not is_open(windows, utc(2025, 1, 11, 23, 30))  # Saturday's own 23:00 is not a Friday
    assert next_open(windows, utc(2025, 1, 11, 0, 0)) == utc(2025, 1, 17, 23, 0)


def test_time_zones_follow_their_wall_clock() -> None:
    berlin = [window("0 2 * * *", 60, "Europe/Berlin")]
    # Winter: 02:00 CET is 01:00 UTC; summer: 02:00 CEST is 00:00 UTC.
    assert is_open(berlin, utc(2025, 1, 6, 1, 30))
    assert not is_open(berlin, utc(2025, 1, 6, 2, 30))
    assert is_open(berlin, utc(2025, 7, 7, 0, 30))
    assert not is_open(berlin, utc(2025, 7, 7, 1, 30))
    assert next_open(berlin, utc(2025, 1, 6, 12)) == utc(2025, 1, 7, 1, 0)
    assert next_open(berlin, utc(2025, 7, 7, 12)) == utc(2025, 7, 8, 0, 0)

    in_utc = [window("0 2 * * *", 60, "UTC")]
    assert not is_open(in_utc, utc(2025, 1, 6, 1, 30))

    # 22:00 in New York (EST, UTC-5) on a Monday is 03:00 UTC on Tuesday: the weekday is New York's.
    new_york = [window("0 22 * * 1", 60, "America/New_York")]
    assert is_open(new_york, utc(2025, 1, 7, 3, 30))
    assert not is_open(new_york, utc(2025, 1, 6, 22, 30))
    assert next_open(new_york, utc(2025, 1, 6)) == utc(2025, 1, 7, 3, 0)
    # In summer (EDT, UTC-4) the same window is an hour earlier in UTC.
    assert next_open(new_york, utc(2025, 7, 7)) == utc(2025, 7, 8, 2, 0)


def test_instants_in_any_offset_are_accepted_and_naive_ones_refused() -> None:
    windows = [window("0 2 * * *", 60, "Europe/Berlin")]
    local = datetime(2025, 1, 6, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert is_open(windows, local)
    found = next_open(windows, local)
    assert found == utc(2025, 1, 7, 1, 0)
    with pytest.raises(ValueError, match="aware"):
        is_open(windows, datetime(2025, 1, 6, 2, 30))  # noqa: DTZ001 - naive on purpose
    with pytest.raises(ValueError, match="aware"):
        next_open(windows, datetime(2025, 1, 6, 2, 30))  # noqa: DTZ001 - naive on purpose


def test_spring_forward_an_opening_in_the_skipped_hour_happens_when_the_clock_jumps() -> None:
    # On 2025-03-30 Berlin's clocks go from 02:00 CET straight to 03:00 CEST (01:00 UTC): 02:30 never
    # happens that day. croniter opens the window at 03:00 CEST instead of skipping the day, and
    # the window still lasts its full hour of elapsed time.
    windows = [window("30 2 * * *", 60, "Europe/Berlin")]
    assert next_open(windows, utc(2025, 3, 29, 12)) == utc(2025, 3, 30, 1, 0)
    assert not is_open(windows, utc(2025, 3, 30, 0, 59, 59))
    assert is_open(windows, utc(2025, 3, 30, 1, 0))
    assert is_open(windows, utc(2025, 3, 30, 1, 59, 59))
    assert not is_open(windows, utc(2025, 3, 30, 2, 0))
    # The next day is back to 02:30 CEST = 00:30 UTC.
    assert next_open(windows, utc(2025, 3, 30, 1, 0)) == utc(2025, 3, 31, 0, 30)
    # The day before it was 02:30 CET = 01:30 UTC.
    assert next_open(windows, utc(2025, 3, 28, 12)) == utc(2025, 3, 29, 1, 30)


def test_fall_back_an_opening_in_the_repeated_hour_happens_twice() -> None:
    # On 2025-10-26 Berlin's 02:00-03:00 happens twice (CEST, then CET): 02:30 opens at 00:30 and
    # again at 01:30 UTC.
    windows = [window("30 2 * * *", 30, "Europe/Berlin")]
    first = next_open(windows, utc(2025, 10, 25, 12))
    assert first == utc(2025, 10, 26, 0, 30)
    second = next_open(windows, first)
    assert second == utc(2025, 10, 26, 1, 30)
    assert next_open(windows, second) == utc(2025, 10, 27, 1, 30)
    assert is_open(windows, utc(2025, 10, 26, 0, 45))
    assert not is_open(windows, utc(2025, 10, 26, 1, 15))
    assert is_open(windows, utc(2025, 10, 26, 1, 45))


def test_duration_is_elapsed_time_not_wall_clock() -> None:
    # 01:00 CEST on the fall-back day is 23:00 UTC; three hours later is 02:00 UTC (03:00 CET on
    # the wall clock, which has moved only two hours).
    windows = [window("0 1 * * *", 180, "Europe/Berlin")]
    assert is_open(windows, utc(2025, 10, 26, 1, 59))
    assert not is_open(windows, utc(2025, 10, 26, 2, 0))


def test_parse_windows_builds_windows() -> None:
    windows = parse_windows(
        [
            raw("0 2 * * 1-5", 120, "Europe/Berlin"),
            raw("0 2 * * 1-5", 120, "America/New_York"),  # same cron, other zone: a different window
            raw("30 1 * * THU,FRI", 1, "UTC"),
            raw("0 3 * * *", 7 * 24 * 60, "UTC"),
        ]
    )
    assert windows == [
        Window("0 2 * * 1-5", timedelta(hours=2), "Europe/Berlin"),
        Window("0 2 * * 1-5", timedelta(hours=2), "America/New_York"),
        Window("30 1 * * THU,FRI", timedelta(minutes=1), "UTC"),
        Window("0 3 * * *", timedelta(days=7), "UTC"),
    ]
    assert len(parse_windows([raw(f"{minute} 2 * * *") for minute in range(20)])) == 20


def _refused(value: object) -> ProblemError:
    with pytest.raises(ProblemError) as caught:
        parse_windows(value)
    assert caught.value.code == "invalid_window"
    assert caught.value.status == 422
    return caught.value


@pytest.mark.parametrize(
    "cron",
    [
        "61 * * * *",
        "* * *",
        "0 25 * * *",
        "0 2 * * 8",
        "*/0 * * * *",
        "a b c d e",
        "",
        "@daily",  # an alias, not five fields
        "0 0 2 * * *",  # six fields (seconds)
        "0 2 * * * 2030",  # seven fields (years)
        "R 2 * * *",  # random: a different window on each evaluation
        "H 2 * * *",  # hashed: needs a seed
        "0 0 31 2 *",  # never opens
        "0 " * 200 + "* * *",
    ],
)
def test_bad_cron_is_refused(cron: str) -> None:
    _refused([raw(cron=cron)])


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus", "europe/berlin", "Europe", "../etc/passwd", "/etc/localtime", ""]
)
def test_unknown_time_zone_is_refused(zone: str) -> None:
    assert "time zone" in _refused([raw(zone=zone)]).detail


@pytest.mark.parametrize("minutes", [0, -1, 7 * 24 * 60 + 1, 8 * 24 * 60, 10**30])
def test_duration_outside_one_minute_to_seven_days_is_refused(minutes: int) -> None:
    _refused([raw(minutes=minutes)])


def test_more_than_twenty_windows_are_refused() -> None:
    assert "at most 20" in _refused([raw(f"{minute} 2 * * *") for minute in range(21)]).detail


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (raw("0 2 * * *", 60), raw("0 2 * * *", 60)),
        (raw("0 2 * * *", 60), raw("0 2 * * *", 30)),  # other durations still open together
        (raw("0 2 * * 1-5", 60), raw("0  2 * * MON-FRI", 90)),  # the same schedule spelt differently
        (raw("0 2 * * 0", 60), raw("0 2 * * 7", 60)),  # Sunday both ways
    ],
)
def test_duplicate_windows_are_refused(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert "window 1" in _refused([first, second]).detail


@pytest.mark.parametrize(
    "value",
    [
        "0 2 * * *",
        {"cron": "0 2 * * *", "duration_minutes": 60, "timezone": "UTC"},
        ["0 2 * * *"],
        [None],
        [{"cron": "0 2 * * *", "duration_minutes": 60}],  # missing timezone
        [{"cron": "0 2 * * *", "timezone": "UTC"}],  # missing duration
        [{"duration_minutes": 60, "timezone": "UTC"}],  # missing cron
        [{**raw(), "duration": 60}],  # an unknown field (a typo) is not silently ignored
        [raw(minutes=True)],
        [raw(minutes="60")],
        [raw(minutes=1.5)],
        [raw(minutes=None)],
        [raw(cron=5)],
        [raw(cron=["0", "2", "*", "*", "*"])],
        [raw(zone=None)],
        [raw(zone=1)],
    ],
)
def test_wrong_types_and_missing_fields_are_refused(value: object) -> None:
    _refused(value)


def test_window_validates_itself() -> None:
    with pytest.raises(ProblemError, match="five fields"):
        Window("* * *", timedelta(hours=1), "UTC")
    with pytest.raises(ProblemError, match="time zone"):
        Window("0 2 * * *", timedelta(hours=1), "Mars/Olympus")
    with pytest.raises(ProblemError, match="duration"):
        Window("0 2 * * *", timedelta(seconds=59), "UTC")
    with pytest.raises(ProblemError, match="duration"):
        Window("0 2 * * *", timedelta(days=7, seconds=1), "UTC")

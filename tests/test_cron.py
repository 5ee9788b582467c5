"""Unit tests for kiq.cron: parsing, next and last ticks, time zones and daylight saving, on fixed clocks."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from zoneinfo import ZoneInfo

import pytest

from kiq.cron import CronError, last_at_or_before, next_after, parse
from kiq.errors import shown

UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # moves its clocks by 30 minutes

# 2024's changes: Berlin 2024-03-31 02:00 -> 03:00 and 2024-10-27 03:00 -> 02:00;
# New York 2024-03-10 02:00 -> 03:00 and 2024-11-03 02:00 -> 01:00.


def utc(*fields: int) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


def local(tz: ZoneInfo, *fields: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=tz, fold=fold)  # type: ignore[misc]


def ticks(expression: str, start: dt.datetime, tz: dt.tzinfo, end: dt.datetime) -> list[dt.datetime]:
    """Every tick in (start, end], by repeated next_after."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)  # arithmetic in real time, not wall time
    found = []
    moment = next_after(expression, start, tz)
    while moment <= end:
        found.append(moment)
        moment = next_after(expression, moment, tz)
    return found


def walls(moments: list[dt.datetime], tz: ZoneInfo) -> list[str]:
    return [m.astimezone(tz).strftime("%m-%d %H:%M:%S%z") for m in moments]


# -- parsing ------------------------------------------------------------------


def test_fields_lists_ranges_and_steps():
    cron = parse("0,30 8-18/2 1,15 */3 1-5")
    assert cron.seconds == (0,)
    assert cron.minutes == (0, 30)
    assert cron.hours == (8, 10, 12, 14, 16, 18)
    assert cron.days == (1, 15)
    assert cron.months == (1, 4, 7, 10)
    assert cron.weekdays == (1, 2, 3, 4, 5)
    assert parse("5/20 * * * *").minutes == (5, 25, 45)  # start/step runs to the end of the range


def test_names_are_case_insensitive_and_sunday_is_0_and_7():
    assert parse("0 0 * JAN,jul mon-FRI").months == (1, 7)
    assert parse("0 0 * * mon-fri").weekdays == (1, 2, 3, 4, 5)
    assert parse("0 0 * * 7").weekdays == (0,)
    assert parse("0 0 * * 5-7").weekdays == (0, 5, 6)
    assert parse("0 0 * * fri-sun").weekdays == (0, 5, 6)


def test_six_fields_start_with_seconds():
    cron = parse("*/15 30 9 * * *")
    assert cron.seconds == (0, 15, 30, 45)
    assert (cron.minutes, cron.hours) == ((30,), (9,))


@pytest.mark.parametrize(("nickname", "same_as"), [
    ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"), ("@hourly", "0 * * * *"),
])
def test_nicknames(nickname, same_as):
    a, b = parse(nickname), parse(same_as)
    assert (a.seconds, a.minutes, a.hours, a.days, a.months, a.weekdays, a.interval) == (
        b.seconds, b.minutes, b.hours, b.days, b.months, b.weekdays, b.interval)
    assert parse(nickname.upper()).hours == b.hours


def test_interval_like_means_seconds_minute_or_hour_starts_with_star():
    assert parse("* * * * *").interval
    assert parse("0 * * * *").interval
    assert parse("*/10 30 2 * * *").interval
    assert not parse("30 2 * * *").interval
    assert not parse("0 0-23 * * *").interval
    assert not parse("@daily").interval


@pytest.mark.parametrize(("expression", "message"), [
    ("* * *", "expected 5 fields"),
    ("* * * * * * *", "got 7"),
    ("", "got 0"),
    ("61 * * * *", "minute 61 is out of range 0-59"),
    ("0 24 * * *", "hour 24 is out of range 0-23"),
    ("0 0 0 * *", "day of month 0 is out of range 1-31"),
    ("0 0 * 13 *", "month 13 is out of range 1-12"),
    ("0 0 * * 8", "day of week 8 is out of range 0-7"),
    ("60 * * * * *", "second 60 is out of range 0-59"),
    ("5-1 * * * *", "runs backwards"),
    ("*/0 * * * *", "step in '*/0'"),
    ("*/x * * * *", "step in '*/x'"),
    ("*/\u00b2 * * * *", "step in '*/\u00b2'"),
    ("\u0661 * * * *", "is not a valid minute"),
    ("*/" + "1" * 5000 + " * * * *", "must be a whole number above 0"),
    ("1,,2 * * * *", "empty item"),
    ("0 0 * * foo", "'foo' is not a valid day of week"),
    ("0 0 * mon *", "'mon' is not a valid month"),
    ("0 0 L * *", "'L' is not a valid day of month"),
    ("0 0 ? * *", "'?' is not a valid day of month"),
    ("0 0 30 2 *", "day 30 never occurs"),
    ("0 0 31 4,6 *", "day 31 never occurs"),
    ("@reboot", "unknown nickname"),
    ("@every_second", "unknown nickname"),
])
def test_bad_expressions_say_what_is_wrong(expression, message):
    with pytest.raises(CronError) as caught:
        parse(expression)
    assert message in str(caught.value)
    assert shown(expression) in str(caught.value)  # cut short when long
    assert isinstance(caught.value, ValueError)


def test_a_non_string_is_a_cron_error():
    with pytest.raises(CronError, match="must be a string"):
        parse(5)  # type: ignore[arg-type]


def test_leap_day_alone_is_a_valid_expression():
    assert parse("0 0 29 2 *").days == (29,)


# -- next ticks in UTC -----------------------------------------------------------


def test_next_is_strictly_after():
    assert next_after("*/15 * * * *", utc(2024, 5, 1, 10, 7), UTC) == utc(2024, 5, 1, 10, 15)
    assert next_after("*/15 * * * *", utc(2024, 5, 1, 10, 15), UTC) == utc(2024, 5, 1, 10, 30)
    assert next_after("*/15 * * * *", utc(2024, 5, 1, 10, 14, 59, 999_999), UTC) == utc(2024, 5, 1, 10, 15)
    assert next_after("* * * * * *", utc(2024, 5, 1, 10, 0, 0, 500_000), UTC) == utc(2024, 5, 1, 10, 0, 1)


def test_result_is_utc_whatever_the_input_zone():
    result = next_after("0 9 * * *", local(BERLIN, 2024, 5, 1, 12), ZoneInfo("Asia/Tokyo"))
    assert result == utc(2024, 5, 2, 0, 0)
    assert result.tzinfo == UTC


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="no time zone"):
        next_after("* * * * *", dt.datetime(2024, 1, 1), UTC)


def test_rolls_over_hours_days_months_and_years():
    assert next_after("0 0 1 1 *", utc(2024, 12, 31, 23, 59, 59), UTC) == utc(2025, 1, 1)
    assert next_after("59 23 31 * *", utc(2024, 4, 1), UTC) == utc(2024, 5, 31, 23, 59)
    assert next_after("0 0 * * *", utc(2024, 2, 28, 12), UTC) == utc(2024, 2, 29)
    assert next_after("30 0 9 * * mon-fri", utc(2024, 5, 3, 9, 0, 31), UTC) == utc(2024, 5, 6, 9, 0, 30)


def test_seconds_field():
    assert ticks("*/20 * * * * *", utc(2024, 5, 1, 10, 0, 0), UTC, utc(2024, 5, 1, 10, 1, 0)) == [
        utc(2024, 5, 1, 10, 0, 20), utc(2024, 5, 1, 10, 0, 40), utc(2024, 5, 1, 10, 1, 0)]
    assert next_after("45 30 9 * * *", utc(2024, 5, 1, 9, 30, 45), UTC) == utc(2024, 5, 2, 9, 30, 45)


def test_nickname_ticks():
    start = utc(2024, 5, 15, 10, 20)  # a Wednesday
    assert next_after("@hourly", start, UTC) == utc(2024, 5, 15, 11)
    assert next_after("@daily", start, UTC) == utc(2024, 5, 16)
    assert next_after("@weekly", start, UTC) == utc(2024, 5, 19)  # Sunday
    assert next_after("@monthly", start, UTC) == utc(2024, 6, 1)
    assert next_after("@yearly", start, UTC) == utc(2025, 1, 1)


def test_leap_day_every_four_years_but_not_1900_style_centuries():
    assert ticks("0 0 29 2 *", utc(2024, 3, 1), UTC, utc(2033, 1, 1)) == [utc(2028, 2, 29), utc(2032, 2, 29)]
    assert next_after("0 0 29 2 *", utc(2096, 3, 1), UTC) == utc(2104, 2, 29)


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    found = ticks("0 0 13 * fri", utc(2024, 9, 1), UTC, utc(2024, 10, 1))
    assert [m.day for m in found] == [6, 13, 20, 27]  # Fridays, and the 13th (a Friday this time)
    found = ticks("0 0 13 * fri", utc(2024, 10, 1), UTC, utc(2024, 10, 31))
    assert [m.day for m in found] == [4, 11, 13, 18, 25]


def test_day_of_month_and_day_of_week_when_one_starts_with_star():
    found = ticks("0 0 */2 * mon", utc(2024, 6, 30), UTC, utc(2024, 8, 31))
    assert [(m.month, m.day) for m in found] == [(7, 1), (7, 15), (7, 29), (8, 5), (8, 19)]
    assert [m.day for m in ticks("0 0 * * mon", utc(2024, 7, 1), UTC, utc(2024, 7, 31))] == [8, 15, 22, 29]


def test_in_a_zone_without_changes():
    tokyo = ZoneInfo("Asia/Tokyo")
    assert ticks("0 9 * * *", utc(2024, 5, 1), tokyo, utc(2024, 5, 3)) == [utc(2024, 5, 2), utc(2024, 5, 3)]


# -- daylight saving ------------------------------------------------------------


def test_berlin_0230_on_spring_forward_runs_once_at_0300():
    found = ticks("30 2 * * *", utc(2024, 3, 29), BERLIN, utc(2024, 4, 2))
    assert walls(found, BERLIN) == ["03-29 02:30:00+0100", "03-30 02:30:00+0100", "03-31 03:00:00+0200",
                                    "04-01 02:30:00+0200"]
    assert found[2] == utc(2024, 3, 31, 1, 0)


def test_berlin_0230_on_fall_back_runs_once_at_the_first_0230():
    found = ticks("30 2 * * *", utc(2024, 10, 25), BERLIN, utc(2024, 10, 29))
    assert walls(found, BERLIN) == ["10-25 02:30:00+0200", "10-26 02:30:00+0200", "10-27 02:30:00+0200",
                                    "10-28 02:30:00+0100"]
    # asked during the second 02:xx, the job already ran this night
    second_pass = local(BERLIN, 2024, 10, 27, 2, 10, fold=1)
    assert next_after("30 2 * * *", second_pass, BERLIN) == local(BERLIN, 2024, 10, 28, 2, 30)
    # asked during the first 02:xx, it is still to come
    first_pass = local(BERLIN, 2024, 10, 27, 2, 10, fold=0)
    assert next_after("30 2 * * *", first_pass, BERLIN) == utc(2024, 10, 27, 0, 30)


def test_new_york_0230_on_spring_forward_runs_at_0300_edt():
    found = ticks("30 2 * * *", utc(2024, 3, 9), NEW_YORK, utc(2024, 3, 12))
    assert walls(found, NEW_YORK) == ["03-09 02:30:00-0500", "03-10 03:00:00-0400", "03-11 02:30:00-0400"]


def test_new_york_0130_on_fall_back_runs_once_in_daylight_time():
    found = ticks("30 1 * * *", utc(2024, 11, 2), NEW_YORK, utc(2024, 11, 5))
    assert walls(found, NEW_YORK) == ["11-02 01:30:00-0400", "11-03 01:30:00-0400", "11-04 01:30:00-0500"]
    assert found[1] == utc(2024, 11, 3, 5, 30)


def test_several_times_in_one_gap_run_once_at_its_end():
    found = ticks("0,20,40 2,3 * * *", utc(2024, 3, 30, 12), BERLIN, utc(2024, 3, 31, 12))
    assert walls(found, BERLIN) == ["03-31 03:00:00+0200", "03-31 03:20:00+0200", "03-31 03:40:00+0200"]


def test_a_gap_of_thirty_minutes():
    # Lord Howe goes from 02:00 to 02:30 on 2024-10-06
    found = ticks("15 2 * * *", utc(2024, 10, 4), LORD_HOWE, utc(2024, 10, 7))
    assert walls(found, LORD_HOWE) == ["10-05 02:15:00+1030", "10-06 02:30:00+1100", "10-07 02:15:00+1100"]


@pytest.mark.parametrize(("tz", "day"), [
    (BERLIN, (2024, 3, 31)), (BERLIN, (2024, 10, 27)), (NEW_YORK, (2024, 3, 10)), (NEW_YORK, (2024, 11, 3)),
])
def test_hourly_runs_once_every_real_hour_across_a_change(tz, day):
    start = local(tz, *day).astimezone(UTC) - dt.timedelta(hours=2)
    found = ticks("0 * * * *", start, tz, start + dt.timedelta(hours=30))
    assert len(found) == 30
    assert {b - a for a, b in itertools.pairwise(found)} == {dt.timedelta(hours=1)}


@pytest.mark.parametrize(("tz", "day"), [
    (BERLIN, (2024, 3, 31)), (BERLIN, (2024, 10, 27)), (NEW_YORK, (2024, 3, 10)), (NEW_YORK, (2024, 11, 3)),
])
def test_every_minute_and_every_second_run_at_every_real_instant(tz, day):
    start = local(tz, *day).astimezone(UTC)
    found = ticks("* * * * *", start, tz, start + dt.timedelta(hours=5))
    assert len(found) == 300
    assert {b - a for a, b in itertools.pairwise(found)} == {dt.timedelta(minutes=1)}
    change = next(m for m in found if m.astimezone(tz).utcoffset() != found[0].astimezone(tz).utcoffset())
    seconds = ticks("* * * * * *", change - dt.timedelta(seconds=5), tz, change + dt.timedelta(seconds=5))
    assert seconds == [change + dt.timedelta(seconds=n) for n in range(-4, 6)]


def test_hourly_in_berlin_shows_02_twice_in_autumn_and_never_in_spring():
    spring = ticks("0 * * * *", utc(2024, 3, 30, 23), BERLIN, utc(2024, 3, 31, 2))
    assert walls(spring, BERLIN) == ["03-31 01:00:00+0100", "03-31 03:00:00+0200", "03-31 04:00:00+0200"]
    autumn = ticks("0 * * * *", utc(2024, 10, 26, 22), BERLIN, utc(2024, 10, 27, 2))
    assert walls(autumn, BERLIN) == ["10-27 01:00:00+0200", "10-27 02:00:00+0200", "10-27 02:00:00+0100",
                                     "10-27 03:00:00+0100"]


def test_fixed_hours_written_out_follow_the_fixed_time_rule():
    autumn = ticks("0 1-4 * * *", utc(2024, 10, 26, 22), BERLIN, utc(2024, 10, 27, 4))
    assert walls(autumn, BERLIN) == ["10-27 01:00:00+0200", "10-27 02:00:00+0200", "10-27 03:00:00+0100",
                                     "10-27 04:00:00+0100"]


def expected(expression: str, tz: ZoneInfo, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The documented rule, computed the slow way, minute by minute (an independent oracle)."""
    cron = parse(expression)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    minute = dt.timedelta(minutes=1)
    instants = []
    moment = start
    while moment <= end + dt.timedelta(hours=3):
        instants.append(moment)
        moment += minute
    wall_of = {i: i.astimezone(tz).replace(tzinfo=None) for i in instants}

    def matches(wall: dt.datetime) -> bool:
        dom, dow = wall.day in cron.days, (wall.weekday() + 1) % 7 in cron.weekdays
        day = (dom and dow) if (cron.dom_star or cron.dow_star) else (dom or dow)
        return (day and wall.month in cron.months and wall.hour in cron.hours and wall.minute in cron.minutes
                and wall.second in cron.seconds)

    fired: set[dt.datetime] = set()
    if cron.interval:
        fired = {i for i in instants if matches(wall_of[i])}
    else:
        first_seen: dict[dt.datetime, dt.datetime] = {}
        for i in instants:
            first_seen.setdefault(wall_of[i], i)
        wall, last_wall = min(wall_of.values()), max(wall_of.values()) - dt.timedelta(hours=3)
        while wall <= last_wall:
            if matches(wall):
                if wall in first_seen:
                    fired.add(first_seen[wall])
                else:  # skipped by a spring-forward change: the first instant after the gap
                    fired.add(next(i for i in instants if wall_of[i] > wall))
            wall += minute
    return sorted(i for i in fired if start < i <= end)


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK, LORD_HOWE])
@pytest.mark.parametrize("expression", ["30 2 * * *", "*/20 * * * *", "0 * * * *", "15 1-3 * * *",
                                        "45 2 * * 0", "0,30 */2 * * *", "10 0-3/2 * * *"])
def test_matches_the_rule_computed_the_slow_way(expression, tz):
    changes = {BERLIN: [(2024, 3, 31), (2024, 10, 27)], NEW_YORK: [(2024, 3, 10), (2024, 11, 3)],
               LORD_HOWE: [(2024, 4, 7), (2024, 10, 6)]}
    for day in [*changes[tz], (2024, 6, 1)]:
        start = local(tz, *day).astimezone(UTC) - dt.timedelta(hours=6)
        end = start + dt.timedelta(hours=36)
        want = expected(expression, tz, start, end)
        assert ticks(expression, start, tz, end) == want, day
        # from any moment, including the second pass over repeated local times
        moment = start + dt.timedelta(hours=3, seconds=1)
        while moment < want[-1]:
            assert next_after(expression, moment, tz) == min(t for t in want if t > moment), (day, moment)
            if want[0] <= moment:
                last = max(t for t in want if t <= moment)
                assert last_at_or_before(expression, moment, tz) == last, (day, moment)
            moment += dt.timedelta(minutes=13, seconds=30)


# -- last tick -----------------------------------------------------------------------


def test_last_at_or_before():
    assert last_at_or_before("*/15 * * * *", utc(2024, 5, 1, 10, 7), UTC) == utc(2024, 5, 1, 10, 0)
    assert last_at_or_before("*/15 * * * *", utc(2024, 5, 1, 10, 15), UTC) == utc(2024, 5, 1, 10, 15)
    assert last_at_or_before("0 0 29 2 *", utc(2031, 1, 1), UTC) == utc(2028, 2, 29)
    assert last_at_or_before("30 2 * * *", utc(2024, 3, 31, 12), BERLIN) == utc(2024, 3, 31, 1, 0)
    assert last_at_or_before("30 2 * * *", utc(2024, 10, 27, 1, 45), BERLIN) == utc(2024, 10, 27, 0, 30)
    assert last_at_or_before("0 * * * *", utc(2024, 10, 27, 1, 30), BERLIN) == utc(2024, 10, 27, 1, 0)


def test_thousands_of_ticks_per_second():
    started = time.perf_counter()
    found = ticks("* * * * * *", utc(2024, 10, 27), BERLIN, utc(2024, 10, 27, 1, 23, 20))
    assert len(found) == 5000
    assert time.perf_counter() - started < 5.0  # about 0.05 s when idle; loose for a loaded machine

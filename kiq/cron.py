"""Cron expressions: parsing, and the next (or last) tick in a time zone, daylight saving included.

An expression has 5 fields (minute, hour, day of month, month, day of week) or 6
with a seconds field first. Each field is ``*`` or a comma list of ``N``,
``A-B``, with an optional step (``*/15``, ``8-18/2``, ``5/10`` meaning 5 to the
end by 10). Months and days of the week may be written as names (``jan``,
``mon-fri``); day of week 0 and 7 are both Sunday. ``@yearly`` (``@annually``),
``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and ``@hourly`` stand for
their usual 5-field forms.

When both the day of month and the day of week are restricted (neither field
starts with ``*``), a day matches if either does, as in every Unix cron:
``0 0 13 * fri`` runs on the 13th and on every Friday. When either starts with
``*`` both must match, so ``0 0 */2 * mon`` runs on odd-numbered Mondays.

Daylight saving (the rule kiq documents):

- A job is *interval-like* when its seconds, minute or hour field starts with
  ``*`` (``* * * * *``, ``*/5 * * * *``, ``0 * * * *``, ``@hourly``). It runs
  at every real instant whose local time matches: local times skipped by a
  spring-forward change never occur, so nothing runs for them, and local times
  repeated by a fall-back change occur twice, so it runs at both. An hourly job
  therefore runs once every real hour through both changes.
- Every other job is *fixed-time* (``30 2 * * *``, ``@daily``). Each matching
  local time runs exactly once. A time repeated by a fall-back change runs at
  its first occurrence only. A time skipped by a spring-forward change runs
  once, at the first instant after the gap: a 02:30 job runs at 03:00 local
  time on the day clocks go from 02:00 to 03:00 (Europe/Berlin and
  America/New_York alike). Several skipped times of one gap, or a skipped time
  and a tick at the very end of the gap, run once together.

Ticks are whole seconds. The search assumes a zone's UTC offset does not change
twice within one day, which holds for every zone in tzdata since 1900.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

from kiq.errors import shown

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1)
PROBE = 86_400  # seconds between offset probes when looking for a DST change
WHOLE = re.compile(r"[0-9]{1,9}")
LOOKBACK = 2**29  # how far back (seconds, about 17 years) the last tick is searched

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {name: n for n, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
WEEKDAYS = {name: n for n, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # longest each month can be


class CronError(ValueError):
    """An expression that cannot be parsed, with a message that says why."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


SECOND = _Field("second", 0, 59)
MINUTE = _Field("minute", 0, 59)
HOUR = _Field("hour", 0, 23)
DAY = _Field("day of month", 1, 31)
MONTH = _Field("month", 1, 12, MONTHS)
WEEKDAY = _Field("day of week", 0, 7, WEEKDAYS)


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field, sorted."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday
    dom_star: bool  # the day-of-month field starts with "*"
    dow_star: bool  # the day-of-week field starts with "*"
    interval: bool  # seconds, minute or hour starts with "*": runs at every real matching instant

    def __str__(self) -> str:
        return self.expression


def parse(expression: str) -> Cron:
    """Parse ``expression``; raises CronError naming the expression and the problem."""
    if not isinstance(expression, str):
        raise CronError(f"a cron expression must be a string, not {shown(expression)}")
    return _parse(expression)


@lru_cache(maxsize=1024)
def _parse(expression: str) -> Cron:
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in NICKNAMES:
            raise CronError(f"{shown(expression)}: unknown nickname; use one of {', '.join(NICKNAMES)}")
        text = NICKNAMES[text.lower()]
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields.insert(0, "0")
    elif len(fields) != 6:
        raise CronError(
            f"{shown(expression)}: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"or 6 with seconds first; got {len(fields)}"
        )
    try:
        values = [_values(field, spec) for field, spec in
                  zip(fields, (SECOND, MINUTE, HOUR, DAY, MONTH, WEEKDAY), strict=True)]
    except CronError as error:
        raise CronError(f"{shown(expression)}: {error}") from None
    weekdays = tuple(sorted({0 if day == 7 else day for day in values[5]}))
    cron = Cron(
        expression=expression.strip(),
        seconds=values[0],
        minutes=values[1],
        hours=values[2],
        days=values[3],
        months=values[4],
        weekdays=weekdays,
        dom_star=fields[3].startswith("*"),
        dow_star=fields[5].startswith("*"),
        interval=any(field.startswith("*") for field in fields[:3]),
    )
    if cron.dow_star and not any(cron.days[0] <= MONTH_DAYS[month - 1] for month in cron.months):
        raise CronError(f"{shown(expression)}: day {cron.days[0]} never occurs in the months given")
    return cron


def _values(text: str, spec: _Field) -> tuple[int, ...]:
    found: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"empty item in {spec.name} field {shown(text)}")
        found.update(_item(item, spec))
    return tuple(sorted(found))


def _item(item: str, spec: _Field) -> range:
    body, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not _whole(step_text) or int(step_text) == 0:
            raise CronError(f"{spec.name} step in {shown(item)} must be a whole number above 0")
        step = int(step_text)
    if body == "*":
        return range(spec.low, spec.high + 1, step)
    start_text, dash, end_text = body.partition("-")
    start = _number(start_text, spec)
    if dash:
        end = _number(end_text, spec)
        if spec is WEEKDAY and end == 0 and start > 0:
            end = 7  # "fri-sun"
    else:
        end = spec.high if slash else start
    if start > end:
        raise CronError(f"{spec.name} range {shown(item)} runs backwards")
    return range(start, end + 1, step)


def _whole(text: str) -> bool:
    """ASCII digits, a few: ``str.isdigit`` takes superscripts and other scripts' digits, which
    ``int`` then refuses or reads, and ``int`` refuses strings of thousands of digits."""
    return WHOLE.fullmatch(text) is not None


def _number(text: str, spec: _Field) -> int:
    if spec.names and text.lower() in spec.names:
        return spec.names[text.lower()]
    if not _whole(text):
        raise CronError(f"{shown(text)} is not a valid {spec.name}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise CronError(f"{spec.name} {value} is out of range {spec.low}-{spec.high}")
    return value


# -- the next tick ------------------------------------------------------------


def next_after(expression: str | Cron, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The first tick strictly after ``after`` (aware), in UTC, for a schedule in time zone ``tz``."""
    cron = expression if isinstance(expression, Cron) else parse(expression)
    return _instant(_next(cron, _epoch(after), tz))


def last_at_or_before(expression: str | Cron, at: dt.datetime, tz: dt.tzinfo) -> dt.datetime | None:
    """The latest tick at or before ``at``, in UTC; None if there was none for ``LOOKBACK`` seconds.

    Found by bisection on ``next_after`` (which only grows with its argument), so
    its cost is logarithmic in how long ago the tick was.
    """
    cron = expression if isinstance(expression, Cron) else parse(expression)
    end = _epoch(at)
    span = 1
    while _next(cron, end - span, tz) > end:
        span *= 2
        if span > LOOKBACK:
            return None
    low, high = end - span, end  # next(low) <= end < next(high)
    while high - low > 1:
        middle = (low + high) // 2
        if _next(cron, middle, tz) <= end:
            low = middle
        else:
            high = middle
    return _instant(_next(cron, low, tz))


def _epoch(moment: dt.datetime) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{shown(moment)} has no time zone; pass an aware datetime")
    return math.floor(moment.timestamp())


def _instant(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


def _offset(tz: dt.tzinfo, instant: int) -> int:
    return _seconds(dt.datetime.fromtimestamp(instant, tz).utcoffset())


def _seconds(delta: dt.timedelta | None) -> int:
    assert delta is not None
    return delta.days * 86_400 + delta.seconds


def _next(cron: Cron, after: int, tz: dt.tzinfo) -> int:
    """The first tick after the epoch second ``after``, as an epoch second.

    The timeline is walked as segments of constant UTC offset. Inside one, local
    time is the instant plus the offset, so the next matching local time gives
    the candidate. If the offset changes before the candidate, the change is
    handled by the DST rule (module docstring) and the walk goes on after it.
    """
    local = dt.datetime.fromtimestamp(after, tz)
    offset = _seconds(local.utcoffset())
    start = after + offset + 1  # local time (as epoch-like seconds) to search from, inclusive
    if local.fold and not cron.interval:
        # ``after`` is in the second pass over repeated local times, which a
        # fixed-time job already had its ticks in: resume where the repeat ends.
        before = _seconds(local.replace(fold=0).utcoffset())
        change = _change(tz, after - (before - offset), after, before)
        if change is not None:
            start = max(start, change + before)
    segment = after
    while True:
        wall = _next_wall(cron, start)
        candidate = wall - offset
        change = _change(tz, segment, candidate, offset)
        if change is None:
            return candidate
        new_offset = _offset(tz, change)
        old_end, new_start = change + offset, change + new_offset  # local times either side of it
        if new_offset > offset:  # spring forward: [old_end, new_start) never happens
            if not cron.interval and wall < new_start:  # a tick in the gap (wall >= old_end)
                return change
            start = new_start
        else:  # fall back: [new_start, old_end) happens again
            start = new_start if cron.interval else old_end
        offset, segment = new_offset, change


def _change(tz: dt.tzinfo, low: int, high: int, offset: int) -> int | None:
    """The first instant in (low, high] whose UTC offset is not ``offset`` (the offset at ``low``)."""
    previous = low
    probe = min(low + PROBE, high)
    while True:
        if _offset(tz, probe) != offset:
            while probe - previous > 1:  # offsets change on whole seconds
                middle = (previous + probe) // 2
                if _offset(tz, middle) == offset:
                    previous = middle
                else:
                    probe = middle
            return probe
        if probe >= high:
            return None
        previous, probe = probe, min(probe + PROBE, high)


def _next_wall(cron: Cron, start: int) -> int:
    """The first matching local time at or after ``start`` (local time as epoch-like seconds)."""
    moment = EPOCH + dt.timedelta(seconds=start)
    year, month, day = moment.year, moment.month, moment.day
    hour, minute, second = moment.hour, moment.minute, moment.second
    first_hour, first_minute, first_second = cron.hours[0], cron.minutes[0], cron.seconds[0]
    limit = year + 30
    while year <= limit:
        i = bisect_left(cron.months, month)
        if i == len(cron.months):
            year, month, day = year + 1, cron.months[0], 1
            hour, minute, second = first_hour, first_minute, first_second
            continue
        if cron.months[i] != month:
            month, day, hour, minute, second = cron.months[i], 1, first_hour, first_minute, first_second
        days = _days(cron, year, month)
        i = bisect_left(days, day)
        if i == len(days):
            month, day, hour, minute, second = month + 1, 1, first_hour, first_minute, first_second
            continue
        if days[i] != day:
            day, hour, minute, second = days[i], first_hour, first_minute, first_second
        i = bisect_left(cron.hours, hour)
        if i == len(cron.hours):
            day, hour, minute, second = day + 1, first_hour, first_minute, first_second
            continue
        if cron.hours[i] != hour:
            hour, minute, second = cron.hours[i], first_minute, first_second
        i = bisect_left(cron.minutes, minute)
        if i == len(cron.minutes):
            hour, minute, second = hour + 1, first_minute, first_second
            continue
        if cron.minutes[i] != minute:
            minute, second = cron.minutes[i], first_second
        i = bisect_left(cron.seconds, second)
        if i == len(cron.seconds):
            minute, second = minute + 1, first_second
            continue
        second = cron.seconds[i]
        return calendar.timegm((year, month, day, hour, minute, second))
    raise CronError(f"{shown(cron.expression)}: no matching time within 30 years")


@lru_cache(maxsize=4096)
def _days(cron: Cron, year: int, month: int) -> tuple[int, ...]:
    """The days of ``month`` that match, by the day-of-month / day-of-week rule."""
    first_weekday, length = calendar.monthrange(year, month)  # Monday = 0
    sunday_based = (first_weekday + 1) % 7
    days = set(cron.days)
    weekdays = set(cron.weekdays)
    both = cron.dom_star or cron.dow_star
    found = []
    for day in range(1, length + 1):
        dom = day in days
        dow = (sunday_based + day - 1) % 7 in weekdays
        if (dom and dow) if both else (dom or dow):
            found.append(day)
    return tuple(found)

"""Execution metrics per job class and minute, in Sidekiq 7's layout, so that its Web UI's
Metrics page, its ``Sidekiq::Metrics::Query`` and kiq's dashboard read the same records.

For each UTC minute Redis holds one hash (``Keys.job_metrics``) with three fields per class:
``CLASS|p`` jobs processed, ``CLASS|f`` of them failed, ``CLASS|ms`` milliseconds spent by the
ones that succeeded; and per class a histogram of those run times (``Keys.job_histogram``), a
string of 26 unsigned 16-bit counters written with ``BITFIELD ... OVERFLOW SAT``, one per bucket
of ``BOUNDS_MS``. As in Sidekiq, failed jobs count in ``p`` and ``f`` only: their run times say
more about the failure than about the job.

A worker adds up what its threads finished per class and minute (``Tallies``, under the lock of
kiq.metrics) and its fetcher sends the tallies with its next acknowledgements (kiq.roundtrip):
no round trip of their own. The records expire ``metrics_retention`` after their last write.
"""

from __future__ import annotations

import bisect
import operator
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis

from kiq.connection import wire
from kiq.keys import Keys, minute_names
from kiq.payload import read_count

# The upper bound, in milliseconds, of each histogram bucket but the last, which takes every run
# of 335 s or more: Sidekiq's buckets, so that both read the same counters.
BOUNDS_MS = (20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750, 8500, 13000,
             20000, 30000, 45000, 65000, 100000, 150000, 225000, 335000)
BUCKETS = len(BOUNDS_MS) + 1
EMPTY = (0,) * BUCKETS
COUNTERS = struct.Struct(f">{BUCKETS}H")  # a histogram as Redis keeps it: a big-endian u16 per bucket
FIELDS = ("p", "f", "ms")  # a class's fields in a minute's hash: CLASS|p, CLASS|f, CLASS|ms
SLOTS = {field: slot for slot, field in enumerate(FIELDS)}
SATURATED = 0xFFFF  # a bucket's counter stops there (u16, OVERFLOW SAT)
RETENTION = 72 * 3600  # seconds, the default of ``metrics_retention``
# Sidekiq's histogram keys name the minute by its day of the month only, so a record must be
# gone before that day comes round again (28 days at the shortest), or two would add up.
MAX_RETENTION = 27 * 24 * 3600


class Tally:
    """What one worker finished of one class in one minute (epoch seconds // 60)."""

    __slots__ = ("buckets", "failed", "job_class", "minute", "ms", "processed", "seconds")

    def __init__(self, job_class: str, minute: int) -> None:
        self.job_class = job_class
        self.minute = minute
        self.processed = self.failed = 0
        self.seconds = 0.0  # run time of the jobs that succeeded
        self.ms = 0  # the same in whole milliseconds, once taken (``Tallies.take``)
        self.buckets = [0] * BUCKETS


class Tallies:
    """A worker's tallies since they were last taken. Not thread-safe: kiq.metrics calls it
    under the lock it takes for every finished job anyway.

    Called for every job, so kept short (about 0.3 us): the current
    minute's tallies are looked up by class alone, and a run under 20 ms, the common case,
    skips the search for its bucket."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, str], Tally] = {}
        self._minute = -1
        self._current: dict[str, Tally] = {}  # the tallies of _minute, by class
        self._carried: dict[str, float] = {}  # by class, the fraction of a millisecond not yet sent

    def add(self, job_class: str, seconds: float, failed: bool) -> None:
        minute = int(time.time()) // 60
        if minute != self._minute:
            self._minute, self._current = minute, {}
        tally = self._current.get(job_class)
        if tally is None:
            tally = self._current[job_class] = self._open[(minute, job_class)] = Tally(job_class, minute)
        tally.processed += 1
        if failed:
            tally.failed += 1
        else:
            tally.seconds += seconds
            ms = seconds * 1000
            tally.buckets[0 if ms < BOUNDS_MS[0] else bisect.bisect_right(BOUNDS_MS, ms)] += 1

    def take(self) -> list[Tally]:
        """The tallies since the last call, their run times in whole milliseconds: what a
        tally leaves of a millisecond goes with the class's next one, so that jobs shorter than
        a millisecond, a few to a round trip, still add up."""
        taken = list(self._open.values())
        self._open, self._minute, self._current = {}, -1, {}
        for tally in taken:
            exact = tally.seconds * 1000 + self._carried.get(tally.job_class, 0.0)
            tally.ms = int(exact)
            self._carried[tally.job_class] = exact - tally.ms
        return taken


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMetrics:
    """One class's execution metrics, over a span of minutes or in one: jobs processed, of which
    ``failed``, the milliseconds the others took, and their run times' histogram."""

    name: str
    processed: int = 0
    failed: int = 0
    ms: int = 0
    histogram: tuple[int, ...] = EMPTY

    @property
    def succeeded(self) -> int:
        return self.processed - self.failed

    @property
    def mean_ms(self) -> float | None:
        return self.ms / self.succeeded if self.succeeded > 0 else None

    def percentile(self, share: float) -> float | None:
        return percentile(self.histogram, share)

    def __add__(self, other: ClassMetrics) -> ClassMetrics:
        return ClassMetrics(self.name, self.processed + other.processed, self.failed + other.failed,
                            self.ms + other.ms, tuple(map(operator.add, self.histogram, other.histogram)))


def read_classes(conn: redis.Redis, keys: Keys, minutes: int, now: float | None = None) -> list[ClassMetrics]:
    """Every class's metrics over the ``minutes`` minutes up to ``now``, by name: one pipeline of
    ``HGETALL`` for the minutes' hashes, then the histograms of the minutes in which each class
    had jobs succeed."""
    counts: dict[str, list[int]] = {}
    histograms: dict[str, list[int]] = {}
    for metrics in _read_minutes(conn, keys, _minutes(minutes, now), None).values():
        for each in metrics:  # added up in lists: a day of minutes is tens of thousands of records
            total = counts.setdefault(each.name, [0, 0, 0])
            total[0] += each.processed
            total[1] += each.failed
            total[2] += each.ms
            histograms[each.name] = list(map(operator.add, histograms.get(each.name, EMPTY), each.histogram))
    return [ClassMetrics(name, processed, failed, ms, tuple(histograms[name]))
            for name, (processed, failed, ms) in sorted(counts.items())]


def read_series(conn: redis.Redis, keys: Keys, job_class: str, minutes: int,
                now: float | None = None) -> list[tuple[int, ClassMetrics]]:
    """One class's metrics in each of the ``minutes`` minutes up to ``now``, oldest first, with
    each minute (epoch seconds // 60); a minute without jobs has zeros."""
    spans = _minutes(minutes, now)
    read = _read_minutes(conn, keys, spans, job_class)
    return [(minute, next(iter(read[minute]), ClassMetrics(job_class))) for minute in spans]


def read_totals(conn: redis.Redis, keys: Keys, minutes: int,
                now: float | None = None) -> list[tuple[int, int, int]]:
    """(minute, processed, failed) of every class together in each of the ``minutes`` minutes up
    to ``now``, oldest first: one pipeline of ``HGETALL``, no histogram read."""
    spans = _minutes(minutes, now)
    pipe = conn.pipeline(transaction=False)
    for hash_name, _ in map(minute_names, spans):
        pipe.hgetall(keys.job_metrics(hash_name))
    totals = []
    for minute, fields in zip(spans, pipe.execute(), strict=True):
        counts = _counts(fields).values()
        totals.append((minute, sum(each[0] for each in counts), sum(each[1] for each in counts)))
    return totals


def _minutes(count: int, now: float | None) -> list[int]:
    last = int(time.time() if now is None else now) // 60
    return list(range(last - count + 1, last + 1))


def _read_minutes(conn: redis.Redis, keys: Keys, minutes: list[int],
                  job_class: str | None) -> dict[int, list[ClassMetrics]]:
    """The metrics of each minute: of every class, or of ``job_class`` alone."""
    names = [minute_names(minute) for minute in minutes]
    pipe = conn.pipeline(transaction=False)
    for hash_name, _ in names:
        if job_class is None:
            pipe.hgetall(keys.job_metrics(hash_name))
        else:
            pipe.hmget(keys.job_metrics(hash_name), [f"{job_class}|{field}" for field in FIELDS])
    replies = pipe.execute()
    counted = [(minute, window, _counts(reply) if job_class is None else _counts_of(job_class, reply))
               for minute, (_, window), reply in zip(minutes, names, replies, strict=True)]
    timed = [keys.job_histogram(name, window) for _, window, counts in counted
             for name, (processed, failed, _) in counts.items() if processed > failed]
    histograms = iter(_get(conn, timed))  # in the order of ``timed``, read in the same order below
    return {minute: [ClassMetrics(name, processed, failed, ms,
                                  counters(next(histograms)) if processed > failed else EMPTY)
                     for name, (processed, failed, ms) in counts.items()]
            for minute, _, counts in counted}


def _counts(fields: dict[str, str]) -> dict[str, list[int]]:
    """Each class's processed, failed and ms in one minute's hash."""
    counts: dict[str, list[int]] = {}
    for field, value in fields.items():
        name, _, metric = field.rpartition("|")
        slot = SLOTS.get(metric)
        if slot is not None:
            counts.setdefault(name, [0, 0, 0])[slot] = read_count(value)
    return counts


def _counts_of(job_class: str, values: list[str | None]) -> dict[str, list[int]]:
    """One class's processed, failed and ms in one minute's hash, read with HMGET."""
    return {job_class: [read_count(value) for value in values]} if values[0] is not None else {}


def _get(conn: redis.Redis, names: list[str]) -> list[str | None]:
    """The values of ``names``, a thousand keys a command."""
    values: list[str | None] = []
    for start in range(0, len(names), 1000):
        values += cast("list[str | None]", conn.mget(names[start: start + 1000]))
    return values


def counters(raw: str | None) -> tuple[int, ...]:
    """A histogram's counters from the string Redis keeps them in (as kiq.connection reads it):
    big-endian u16s, as long as the highest bucket ever written; absent ones are 0."""
    return COUNTERS.unpack(wire(raw or "")[: COUNTERS.size].ljust(COUNTERS.size, b"\0"))


def percentile(histogram: Sequence[int], share: float) -> float | None:
    """The run time in milliseconds under which ``share`` (0.5 for the median) of the counted runs
    fall, interpolated within its bucket (as Prometheus's ``histogram_quantile`` does); the last
    bucket, which has no upper bound, gives its lower one. None for an empty histogram."""
    total = sum(histogram)
    if not total:
        return None
    rank, seen = share * total, 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            lower = BOUNDS_MS[index - 1] if index else 0
            if index == len(BOUNDS_MS):
                return float(lower)
            return lower + (BOUNDS_MS[index] - lower) * (rank - seen) / count
        seen += count
    return float(BOUNDS_MS[-1])

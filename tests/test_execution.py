"""kiq.execution: a worker's tallies per class and minute, and reading Sidekiq 7's per-minute
records back (through kiq.api) on a real Redis, as kiq's round trip writes them."""

from __future__ import annotations

import calendar
import types

import pytest
from conftest import run_python, wait_for

from kiq import execution
from kiq.api import API
from kiq.connection import connect
from kiq.execution import BOUNDS_MS, BUCKETS, ClassMetrics, Tallies, counters, percentile
from kiq.keys import Keys
from kiq.roundtrip import RoundTrip

MINUTE = calendar.timegm((2031, 3, 4, 9, 7, 0)) // 60
IDENT = "host:1:abc"


def at(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(execution, "time", types.SimpleNamespace(time=lambda: seconds))


def test_each_run_falls_in_sidekiqs_bucket_for_its_milliseconds(monkeypatch):
    """A bucket holds runs below its bound, in milliseconds; the last one every run of 335 s
    and more."""
    at(monkeypatch, MINUTE * 60 + 5)
    tallies = Tallies()
    runs = {0.0: 0, 0.0199: 0, 0.020: 1, 0.0449: 2, 0.100: 5, 0.2999: 7, 1.0: 10, 20.0: 18, 334.9: 24,
            335.0: 25, 3600.0: 25}
    for seconds in runs:
        tallies.add("Job", seconds, failed=False)
    [tally] = tallies.take()
    expected = [0] * BUCKETS
    for bucket in runs.values():
        expected[bucket] += 1
    assert tally.buckets == expected
    assert (tally.job_class, tally.minute, tally.processed, tally.failed) == ("Job", MINUTE, 11, 0)
    assert tally.ms == int(sum(runs) * 1000)
    assert tallies.take() == []  # taken once


def test_milliseconds_left_over_by_one_tally_go_with_the_next(monkeypatch):
    """A round trip may carry one short job of a class: each tally's milliseconds are whole,
    and the fraction left goes with the class's next tally, so short jobs still add up."""
    at(monkeypatch, MINUTE * 60 + 5)
    tallies, sent = Tallies(), []
    for _ in range(8):
        tallies.add("Quick", 0.00025, failed=False)
        tallies.add("Other", 0.0011, failed=False)
        sent += tallies.take()
    assert sum(t.ms for t in sent if t.job_class == "Quick") == 2  # 8 x 0.25 ms
    assert [t.ms for t in sent if t.job_class == "Other"] == [1, 1, 1, 1, 1, 1, 1, 1]  # 8.8 ms: 0.8 to come


def test_failed_runs_count_without_a_run_time_and_each_class_and_minute_apart(monkeypatch):
    tallies = Tallies()
    at(monkeypatch, MINUTE * 60 + 59.9)
    tallies.add("A", 0.5, failed=True)
    tallies.add("A", 0.01, failed=False)
    tallies.add("B", 0.01, failed=False)
    at(monkeypatch, MINUTE * 60 + 60.0)
    tallies.add("A", 0.01, failed=False)
    found = {(t.job_class, t.minute): (t.processed, t.failed, t.ms, sum(t.buckets)) for t in tallies.take()}
    assert found == {("A", MINUTE): (2, 1, 10, 1), ("B", MINUTE): (1, 0, 10, 1),
                     ("A", MINUTE + 1): (1, 0, 10, 1)}


def test_percentiles_interpolate_within_the_bucket_they_fall_in():
    histogram = [0] * BUCKETS
    histogram[0] = 50  # under 20 ms
    histogram[4] = 50  # 65 to 100 ms
    assert percentile(histogram, 0.5) == 20.0
    assert percentile(histogram, 0.25) == 10.0
    assert percentile(histogram, 0.75) == pytest.approx(82.5)
    assert percentile(histogram, 0.99) == pytest.approx(99.3)
    histogram[25] = 900  # 335 s and more: no upper bound, so its lower one
    assert percentile(histogram, 0.99) == BOUNDS_MS[-1]
    assert percentile([0] * BUCKETS, 0.5) is None


def test_counters_read_the_string_bitfield_writes(redis_server, r):
    """kiq's connections decode what they read as UTF-8 with surrogate escapes: counters whose
    bytes are not UTF-8, or happen to be (0xC3A9 is "é"), come back exact."""
    conn = connect(redis_server.url)
    assert counters(None) == (0,) * BUCKETS
    r.bitfield("h").incrby("u16", "#0", 3).incrby("u16", "#2", 258).execute()  # a string of 6 bytes
    assert counters(conn.get("h"))[:4] == (3, 0, 258, 0) and sum(counters(conn.get("h"))) == 261
    r.bitfield("h").incrby("u16", "#1", 0x80).incrby("u16", "#25", 0xC3A9).execute()
    assert counters(conn.get("h"))[:3] == (3, 0x80, 258) and counters(conn.get("h"))[25] == 0xC3A9


@pytest.fixture
def written(redis_server, r):
    """Two classes' records over three minutes, written by kiq's round trip."""
    keys = Keys()
    r.hset(keys.process(IDENT), "beat", "1")
    trip = RoundTrip(connect(redis_server.url), keys, IDENT, ["default"], 60.0)

    def tally(job_class: str, minute: int, runs: list[float], failed: int = 0) -> execution.Tally:
        tallies = Tallies()
        with pytest.MonkeyPatch.context() as patch:
            at(patch, minute * 60 + 1)
            for seconds in runs:
                tallies.add(job_class, seconds, failed=False)
            for _ in range(failed):
                tallies.add(job_class, 1.0, failed=True)
        return tallies.take()[0]

    trip.send([], 0, [], [], [tally("HardJob", MINUTE - 2, [0.01] * 8 + [0.09] * 2, failed=1),
                              tally("EasyJob", MINUTE - 2, [], failed=3),
                              tally("HardJob", MINUTE, [0.2] * 5)])
    trip.send([], 0, [], [], [tally("HardJob", MINUTE - 60, [5.0])])  # an hour before: out of the window
    return API(redis_server.url, namespace="")


def test_the_api_adds_up_each_class_over_the_last_minutes(written):
    now = MINUTE * 60 + 30
    hard, easy = sorted(written.job_metrics(minutes=60, now=now), key=lambda each: each.name)[::-1]
    assert (hard.name, hard.processed, hard.failed, hard.succeeded) == ("HardJob", 16, 1, 15)
    assert hard.ms == 8 * 10 + 2 * 90 + 5 * 200
    assert hard.mean_ms == pytest.approx(1260 / 15)
    assert hard.histogram[0] == 8 and hard.histogram[4] == 2 and hard.histogram[6] == 5
    assert hard.percentile(0.5) < 20 and 150 < hard.percentile(0.95) < 225
    assert easy == ClassMetrics("EasyJob", 3, 3, 0)
    assert easy.mean_ms is None and easy.percentile(0.5) is None
    assert [each.name for each in written.job_metrics(minutes=2, now=now)] == ["HardJob"]
    assert written.job_metrics(minutes=61, now=now)[1].processed == 17  # the hour before, too


def test_the_api_gives_a_class_s_series_minute_by_minute(written):
    series = written.job_series("HardJob", minutes=4, now=MINUTE * 60 + 59)
    assert [minute for minute, _ in series] == [MINUTE - 3, MINUTE - 2, MINUTE - 1, MINUTE]
    assert [(each.processed, each.failed) for _, each in series] == [(0, 0), (11, 1), (0, 0), (5, 0)]
    assert series[3][1].histogram[6] == 5 and series[0][1] == ClassMetrics("HardJob")
    assert all(each.name == "HardJob" for _, each in series)


def records(r, job_class: str) -> dict[str, int]:
    """A class's counts added up over every minute's hash (a test may straddle two minutes)."""
    found = {"p": 0, "f": 0, "ms": 0, "hashes": 0}
    for key in r.scan_iter("j|*"):
        fields = r.hgetall(key)
        found["hashes"] += f"{job_class}|p" in fields
        for field in ("p", "f", "ms"):
            found[field] += int(fields.get(f"{job_class}|{field}", 0))
    return found


def histograms(r, job_class: str) -> list[int]:
    """A class's histogram buckets added up over every minute."""
    total = [0] * BUCKETS
    for key in r.scan_iter(f"{job_class}-*"):
        for index, count in enumerate(counters(r.get(key))):
            total[index] += count
    return total


@pytest.mark.slow
def test_a_worker_records_each_class_s_jobs_per_minute(redis_server, r, start_kiq):
    """Real jobs of three classes through ``kiq start``: fast ones, ones of a known run time, and
    failing ones; each class's counts reach Sidekiq's per-minute records with the acknowledgements,
    kept for ``metrics_retention``."""
    kiq_ = start_kiq(concurrency=4, metrics_retention=3600)
    kiq_.wait_workers(1)
    run_python("import sample_jobs\n"
               "sample_jobs.RecordJob.perform_bulk([[str(i)] for i in range(20)])\n"
               "sample_jobs.SlowJob.perform_bulk([['slow', 0.26] for _ in range(4)])\n"
               "for _ in range(3): sample_jobs.NoRetryJob.perform_later()\n", redis_server.url)
    wait_for(lambda: records(r, "RecordJob")["p"] == 20 and records(r, "SlowJob")["p"] == 4
             and records(r, "NoRetryJob")["p"] == 3, timeout=30)
    fast, slow, failing = records(r, "RecordJob"), records(r, "SlowJob"), records(r, "NoRetryJob")
    assert fast["f"] == 0 and 0 <= fast["ms"] < 20 * 1000
    assert slow["f"] == 0 and 4 * 260 <= slow["ms"] < 4 * 335
    assert failing["f"] == 3 and failing["ms"] == 0  # no run time for failures, as in Sidekiq
    assert sum(histograms(r, "RecordJob")) == 20
    assert histograms(r, "SlowJob")[7] == 4  # 260 ms: from 225 to 335 ms
    assert not list(r.scan_iter("NoRetryJob-*"))
    keys = [*r.scan_iter("j|*"), *r.scan_iter("RecordJob-*"), *r.scan_iter("SlowJob-*")]
    assert len(keys) >= 3 and all(3500 < r.ttl(key) <= 3600 for key in keys)
    by_name = {each.name: each for each in API(redis_server.url, namespace="").job_metrics(minutes=5)}
    assert (by_name["SlowJob"].processed, by_name["SlowJob"].ms) == (4, slow["ms"])
    assert 225 <= by_name["SlowJob"].percentile(0.5) <= 335
    assert (by_name["NoRetryJob"].processed, by_name["NoRetryJob"].failed) == (3, 3)

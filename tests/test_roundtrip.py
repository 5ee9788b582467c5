"""Unit tests for kiq.roundtrip: one ACK_AND_FETCH call at a time on a real Redis, no threads."""

from __future__ import annotations

import calendar
import collections
import time
import types

import pytest
import redis

from kiq import execution, roundtrip
from kiq.connection import connect
from kiq.execution import Tallies, Tally
from kiq.heartbeat import Lapsed
from kiq.keys import Keys
from kiq.retry import DEAD_MAX_JOBS, SUCCESS, Outcome
from kiq.roundtrip import ACK_AND_FETCH, STAT_TTL, QueueOrder, RoundTrip, Unit

IDENT = "host:1:abc"


def round_trip(redis_server, queues=("default",), namespace: str = "", ttl: float = 60.0) -> RoundTrip:
    """A round trip for a worker whose entry exists, as its heartbeat made it."""
    keys = Keys(namespace)
    redis_server.client().hset(keys.process(IDENT), "beat", "1")
    return RoundTrip(connect(redis_server.url), keys, IDENT, list(queues), ttl)


def wip(r, queue: str = "default") -> list[str]:
    return r.lrange(f"kiq:wip:{IDENT}|{queue}", 0, -1)


def test_it_takes_jobs_in_order_into_the_in_progress_list_and_registers_it(redis_server, r):
    r.lpush("queue:default", *(f"j{n}" for n in range(5)))
    trip = round_trip(redis_server, ttl=30.0)
    assert trip.send([], 3, [], ["default"]) == [Unit("default", f"j{n}") for n in range(3)]
    assert wip(r) == ["j2", "j1", "j0"]
    assert r.lrange("queue:default", 0, -1) == ["j4", "j3"]
    assert r.smembers("kiq:wip") == {f"{IDENT}|default"}
    assert 29_000 < r.pttl(IDENT) <= 30_000  # each call extends the worker's entry
    assert trip.send([], 5, [], ["default"]) == [Unit("default", "j3"), Unit("default", "j4")]
    assert trip.send([], 5, [], ["default"]) == []


def test_it_acknowledges_files_retries_and_dead_jobs_and_counts_them(redis_server, r):
    r.lpush("queue:default", "ok", "dropped", "retried", "died")
    trip = round_trip(redis_server)
    ok, dropped, retried, died = trip.send([], 4, [], ["default"])
    now = time.time()
    acks = [(ok, SUCCESS), (dropped, Outcome(True)), (retried, Outcome(True, "retry", "r2", now + 60)),
            (died, Outcome(True, "dead", "d2", now))]
    assert trip.send(acks, 0, [], []) == []
    assert wip(r) == []
    assert r.zrange("retry", 0, -1, withscores=True) == [("r2", pytest.approx(now + 60))]
    assert r.zrange("dead", 0, -1, withscores=True) == [("d2", pytest.approx(now))]
    date = time.strftime("%Y-%m-%d", time.gmtime(now))
    assert (r.get("stat:processed"), r.get(f"stat:processed:{date}")) == ("4", "4")
    assert (r.get("stat:failed"), r.get(f"stat:failed:{date}")) == ("3", "3")
    assert STAT_TTL - 60 < r.ttl(f"stat:processed:{date}") <= STAT_TTL
    assert STAT_TTL - 60 < r.ttl(f"stat:failed:{date}") <= STAT_TTL


def test_it_files_retries_and_dead_jobs_only_for_jobs_still_held(redis_server, r):
    """A job no longer in the in-progress list went back to its queue (a stop, a sweep):
    filing it in retry or dead as well would run it twice. It did run, so it counts."""
    r.lpush("queue:default", "a", "b", "c")
    trip = round_trip(redis_server)
    a, b, c = trip.send([], 3, [], ["default"])
    r.delete(f"kiq:wip:{IDENT}|default")
    trip.send([(a, Outcome(True, "retry", "a2", 1.0)), (b, Outcome(True, "dead", "b2", time.time())),
               (c, SUCCESS)], 0, [], [])
    assert r.zcard("retry") == 0 and r.zcard("dead") == 0
    assert r.get("stat:processed") == "3" and r.get("stat:failed") == "2"


def test_copies_of_one_payload_are_acknowledged_one_each(redis_server, r):
    r.lpush("queue:default", "same", "same", "same")
    trip = round_trip(redis_server)
    first, second, _ = trip.send([], 3, [], ["default"])
    trip.send([(first, SUCCESS), (second, Outcome(True, "retry", "again", 1.0))], 0, [], [])
    assert wip(r) == ["same"] and r.zrange("retry", 0, -1) == ["again"]


def test_a_dead_job_trims_the_dead_set(redis_server, r):
    now = time.time()
    r.zadd("dead", {f"old-{n}": now - 100 - n for n in range(DEAD_MAX_JOBS)})
    r.lpush("queue:default", "job")
    trip = round_trip(redis_server)
    [job] = trip.send([], 1, [], ["default"])
    trip.send([(job, Outcome(True, "dead", "newest", now))], 0, [], [])
    assert r.zcard("dead") == DEAD_MAX_JOBS and r.zscore("dead", "newest") is not None
    assert r.zscore("dead", f"old-{DEAD_MAX_JOBS - 1}") is None  # the oldest one made room


def test_each_job_comes_from_its_pick_and_an_empty_pick_falls_back_to_the_order(redis_server, r):
    r.lpush("queue:a", "a0", "a1")
    r.lpush("queue:b", *(f"b{n}" for n in range(5)))
    trip = round_trip(redis_server, ["a", "b", "c"])
    got = trip.send([], 6, ["a", "b", "a", "c", "a"], ["c", "b", "a"])
    # Slot 4 picks the empty c, slot 5 the emptied a, slot 6 has no pick: each takes from the
    # first queue in the order that has a job.
    assert got == [Unit("a", "a0"), Unit("b", "b0"), Unit("a", "a1"), Unit("b", "b1"), Unit("b", "b2"),
                   Unit("b", "b3")]
    assert wip(r, "a") == ["a1", "a0"] and wip(r, "b") == ["b3", "b2", "b1", "b0"]
    assert r.smembers("kiq:wip") == {f"{IDENT}|a", f"{IDENT}|b"}  # only the lists it took into


def test_weighted_picks_keep_the_proportions_of_a_job_at_a_time_fetch(redis_server, r):
    order = QueueOrder([("critical", 3), ("default", 1)], strict=False)
    for name in ("critical", "default"):
        r.lpush(f"queue:{name}", *(f"{name}{n}" for n in range(2000)))
    trip = round_trip(redis_server, order.names)
    taken: collections.Counter[str] = collections.Counter()
    for _ in range(20):
        taken.update(unit.queue for unit in trip.send([], 50, order.picks(50), order.order()))
    # 1,000 jobs at 3 to 1: the standard error of the share is under 0.014, so 0.07 is 5 sigma.
    assert abs(taken["critical"] / 1000 - 0.75) < 0.07, taken


def test_it_does_nothing_once_the_worker_s_entry_is_gone(redis_server, r):
    r.lpush("queue:default", "j0", "j1")
    trip = round_trip(redis_server)
    j0, _ = trip.send([], 2, [], ["default"])
    r.delete(IDENT)
    with pytest.raises(Lapsed):
        trip.send([(j0, Outcome(True, "retry", "j0-retried", 1.0))], 5, [], ["default"])
    assert wip(r) == ["j1", "j0"] and r.zcard("retry") == 0 and not r.exists("stat:processed")
    assert not r.exists(IDENT)  # the reclaim (kiq.lease) recreates it, not the round trip


def test_a_namespace_prefixes_every_key(redis_server, r):
    r.lpush("app:queue:default", "mine")
    r.lpush("queue:default", "not-mine")
    trip = round_trip(redis_server, namespace="app")
    [unit] = trip.send([], 2, [], ["default"])
    trip.send([(unit, Outcome(True, "dead", "mine-dead", time.time()))], 0, [], [])
    assert r.zrange("app:dead", 0, -1) == ["mine-dead"] and r.get("app:stat:failed") == "1"
    assert r.smembers("app:kiq:wip") == {f"{IDENT}|default"}
    assert r.lrange("queue:default", 0, -1) == ["not-mine"]
    assert sorted(r.keys("*")) == sorted(
        ["app:" + IDENT, "app:kiq:wip", "app:dead", "app:stat:processed", "app:stat:failed", "queue:default"]
        + [f"app:stat:{stat}:{time.strftime('%Y-%m-%d', time.gmtime())}" for stat in ("processed", "failed")]
    )


def test_the_daily_stat_keys_follow_the_utc_day(redis_server, r, monkeypatch):
    midnight = calendar.timegm((2031, 3, 1, 0, 0, 0))
    clock = [midnight - 0.5]
    monkeypatch.setattr(roundtrip, "time", types.SimpleNamespace(time=lambda: clock[0]))
    r.lpush("queue:default", *(f"j{n}" for n in range(3)))
    trip = round_trip(redis_server)
    units = trip.send([], 3, [], ["default"])
    trip.send([(units[0], SUCCESS)], 0, [], [])
    clock[0] = midnight + 0.5
    trip.send([(units[1], SUCCESS)], 0, [], [])
    clock[0] = midnight - 0.2  # a clock set back across midnight counts on the day it shows
    trip.send([(units[2], SUCCESS)], 0, [], [])
    assert r.get("stat:processed:2031-02-28") == "2" and r.get("stat:processed:2031-03-01") == "1"


def test_the_script_uses_the_keys_it_is_given_and_no_others(redis_server, r):
    """Every key reaches the script through KEYS[] (Redis's rule, and Redis Cluster's): given
    names kiq would never build, it works on those alone, which a user allowed no other key
    checks on every command it runs."""
    names = ["entry", "retries", "deads", "done", "fails", "done-today", "fails-today", "lists",
             "q1", "q1-wip", "q1-suspects", "q2", "q2-wip", "q2-suspects"]
    tally_keys = ["minute", "histogram"]
    r.acl_setuser("narrow", enabled=True, passwords=["+pw"], commands=["+@all"],
                  keys=[f"%RW~{name}" for name in names + tally_keys])
    narrow = redis.Redis(port=redis_server.port, username="narrow", password="pw", decode_responses=True)
    script = narrow.register_script(ACK_AND_FETCH)
    r.hset("entry", "beat", "1")
    r.lpush("q1", "x")
    r.lpush("q2", "y", "z")
    members = ["me|one", "me|two"]
    taken = script(keys=names, args=[time.time(), 60000, 0, 600, *members, 0, "1", 3, 0, "1", "2"])
    assert taken == [1, 0, 0, 1, "x", 2, "y", 2, "z"]  # no problem, no suspect, then the jobs
    r.rpush("q2-suspects", "s")
    r.lpush("q1", "w")
    taken = script(keys=names, args=[time.time(), 60000, 0, 600, *members, 0, "1", 3, 0, "1", "2"])
    assert taken == [1, 0, 1, 2, "s"]  # the suspect alone
    assert r.lrange("q2-wip", 0, -1) == ["s", "z", "y"] and r.llen("q1") == 1
    r.lrem("q2-wip", 1, "s")
    acks = [1, "x", -2, "y", "dead", "y2", time.time(), "1", -2, "z", "retry", "z2", 5.0, "1"]
    tally = ["Job", 3, 2, 7, 1, 0, 1]  # 3 processed, 2 failed, 7 ms for the one that succeeded
    assert script(keys=names + tally_keys, args=[time.time(), 60000, 1, 600, *members, 3, *acks, *tally,
                                                  "0", 0, 0]) == [1, 0, 0]
    assert r.zrange("deads", 0, -1) == ["y2"] and r.zrange("retries", 0, -1) == ["z2"]
    assert [r.get(name) for name in ("done", "fails", "done-today", "fails-today")] == ["3", "2", "3", "2"]
    assert r.smembers("lists") == {"me|one", "me|two"}
    assert r.hgetall("minute") == {"Job|p": "3", "Job|f": "2", "Job|ms": "7"}
    assert r.bitfield("histogram").get("u16", "#0").execute() == [1]
    assert r.dbsize() == 11  # q2 and the in-progress lists are empty now, so gone; q1 keeps "w"


def test_strict_order_is_fixed():
    order = QueueOrder([("c", 1), ("a", 1), ("b", 1)], strict=True)
    assert all(order.order() == ["c", "a", "b"] for _ in range(100))
    assert QueueOrder([("only", 5)], strict=False).order() == ["only"]
    assert order.picks(10) == [] and QueueOrder([("only", 5)], strict=False).picks(10) == []


@pytest.mark.parametrize(
    "weights",
    [{"critical": 3, "default": 1}, {"a": 3, "b": 2, "c": 1}, {"x": 1, "y": 1}, {"big": 10, "small": 1}],
)
def test_weighted_order_puts_each_queue_first_in_proportion_to_its_weight(weights):
    order = QueueOrder(list(weights.items()), strict=False)
    samples = 20_000
    first: collections.Counter[str] = collections.Counter()
    for _ in range(samples):
        names = order.order()
        assert sorted(names) == sorted(weights)  # every queue, once, every time
        first[names[0]] += 1
    total = sum(weights.values())
    for name, weight in weights.items():
        # 20,000 samples: the standard error is under 0.0036, so 0.02 is more than 5 sigma.
        assert abs(first[name] / samples - weight / total) < 0.02, (name, first)


def test_weighted_order_varies():
    order = QueueOrder([("a", 1), ("b", 1), ("c", 1)], strict=False)
    assert len({tuple(order.order()) for _ in range(500)}) == 6


def tally(job_class: str, minute: int, durations: list[float], failed: int = 0) -> Tally:
    """What a worker's metrics tally for ``durations`` (seconds) of jobs that succeeded and
    ``failed`` jobs that did not (kiq.execution)."""
    tallies = Tallies()
    clock = types.SimpleNamespace(time=lambda: minute * 60 + 1.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(execution, "time", clock)
        for seconds in durations:
            tallies.add(job_class, seconds, False)
        for _ in range(failed):
            tallies.add(job_class, 0.5, True)
    [taken] = tallies.take()
    return taken


def histogram(r, key: str) -> list[int]:
    return r.bitfield(key).get("u16", "#0").get("u16", "#1").get("u16", "#7").get("u16", "#25").execute()


def test_tallies_go_to_sidekiqs_per_minute_records_with_the_acknowledgements(redis_server, r):
    minute = calendar.timegm((2031, 3, 4, 9, 7, 0)) // 60
    r.lpush("queue:default", "a", "b")
    trip = round_trip(redis_server)
    trip.retention = 3600
    units = trip.send([], 2, [], ["default"])
    tallies = [tally("HardJob", minute, [0.001, 0.0194, 0.02, 0.3], failed=2),
               tally("EasyJob", minute, [], failed=1), tally("HardJob", minute + 1, [400.0])]
    trip.send([(unit, SUCCESS) for unit in units], 0, [], [], tallies)
    assert r.hgetall("j|20310304|9:7") == {"HardJob|p": "6", "HardJob|f": "2", "HardJob|ms": "340",
                                           "EasyJob|p": "1", "EasyJob|f": "1"}
    assert r.hgetall("j|20310304|9:8") == {"HardJob|p": "1", "HardJob|ms": "400000"}
    # 1 and 19.4 ms under 20, 20 ms from 20 to 30, 300 ms from 225 to 335, 400 s the slow bucket
    assert histogram(r, "HardJob-04-09:7") == [2, 1, 1, 0]
    assert histogram(r, "HardJob-04-09:8") == [0, 0, 0, 1]
    assert not r.exists("EasyJob-04-09:7")  # failed runs have no run time, as in Sidekiq
    for key in ("j|20310304|9:7", "j|20310304|9:8", "HardJob-04-09:7", "HardJob-04-09:8"):
        assert 3590 < r.ttl(key) <= 3600, key
    trip.send([], 0, [], [], [tally("HardJob", minute, [0.001])])  # they add up
    assert r.hget("j|20310304|9:7", "HardJob|p") == "7" and histogram(r, "HardJob-04-09:7")[0] == 3


def test_a_histogram_bucket_stops_at_its_largest_count(redis_server, r):
    """Sidekiq's counters are 16 bits wide and saturate; kiq's are the same ones."""
    minute = calendar.timegm((2031, 3, 4, 9, 7, 0)) // 60
    trip = round_trip(redis_server)
    big = tally("HardJob", minute, [0.001])
    big.buckets[0] = 70_000
    trip.send([], 0, [], [], [big])
    trip.send([], 0, [], [], [tally("HardJob", minute, [0.001])])
    assert histogram(r, "HardJob-04-09:7")[0] == execution.SATURATED


def test_a_namespace_prefixes_the_metrics_keys(redis_server, r):
    minute = calendar.timegm((2031, 3, 4, 9, 7, 0)) // 60
    trip = round_trip(redis_server, namespace="app")
    trip.send([], 0, [], [], [tally("HardJob", minute, [0.001])])
    assert {"app:j|20310304|9:7", "app:HardJob-04-09:7"} <= set(r.keys("*"))
    assert not r.exists("j|20310304|9:7")


def test_a_metrics_key_of_another_type_stops_no_acknowledgement(redis_server, r):
    minute = calendar.timegm((2031, 3, 4, 9, 7, 0)) // 60
    r.set("j|20310304|9:7", "not a hash")
    r.hset("HardJob-04-09:7", "not", "a string")
    r.lpush("queue:default", "a", "b")
    trip = round_trip(redis_server)
    units = trip.send([], 2, [], ["default"])
    assert trip.send([(units[0], SUCCESS)], 1, [], ["default"], [tally("HardJob", minute, [0.001])]) == []
    assert wip(r) == ["b"] and r.get("stat:processed") == "1"
    assert r.get("j|20310304|9:7") == "not a hash"

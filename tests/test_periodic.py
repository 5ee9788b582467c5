"""Tests for kiq.periodic: entries, their validation, and each tick enqueued exactly once in a real Redis."""

from __future__ import annotations

import collections
import datetime as dt
import importlib
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

import kiq
from kiq.config import ConfigError
from kiq.connection import connect
from kiq.keys import Keys
from kiq.payload import decode
from kiq.periodic import Entry, Periodic, bind_jobs, clear, declared, describe, entries_from_config, merge

UTC = dt.timezone.utc
JID = re.compile(r"[0-9a-f]{24}")
EVERY_SECOND = "* * * * * *"


class PeriodicCleanupJob(kiq.Job):
    queue = "maintenance"
    retry = 3

    def perform(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def no_declared_entries() -> Iterator[None]:
    clear()
    yield
    clear()


@pytest.fixture
def conn(redis_server: Any) -> redis.Redis:
    return connect(redis_server.url)


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def seconds(moment: dt.datetime, plus: float = 0.0) -> dt.datetime:
    return moment + dt.timedelta(seconds=plus)


def ticks_between(start: dt.datetime, end: dt.datetime) -> list[int]:
    """The per-second ticks in (start, end]."""
    return list(range(math.floor(start.timestamp()) + 1, math.floor(end.timestamp()) + 1))


def jobs(r: redis.Redis, queue: str = "default", prefix: str = "") -> list[dict[str, Any]]:
    """Jobs in a queue, oldest first."""
    return [json.loads(raw) for raw in reversed(r.lrange(f"{prefix}queue:{queue}", 0, -1))]


def per_tick(r: redis.Redis, name: str, queue: str = "default") -> collections.Counter[int]:
    return collections.Counter(job["periodic"]["tick"] for job in jobs(r, queue)
                               if job["periodic"]["name"] == name)


def entry(name: str = "every-second", cron: str = EVERY_SECOND, **settings: Any) -> Entry:
    return Entry(name=name, cron=cron, job=settings.pop("job", "PeriodicCleanupJob"), **settings)


# -- entries ------------------------------------------------------------------------


def test_entries_from_config_read_every_key():
    [nightly, hourly] = entries_from_config([
        {"name": "nightly-cleanup", "cron": "0 3 * * *", "class": "PeriodicCleanupJob", "args": [1, "a"],
         "kwargs": {"dry_run": True}, "queue": "low", "tz": "Europe/Berlin", "catch_up": True, "retry": 2},
        {"name": "hourly", "cron": "@hourly", "class": "Billing::InvoiceJob"},
    ])
    assert nightly == Entry(name="nightly-cleanup", cron="0 3 * * *", job="PeriodicCleanupJob", args=(1, "a"),
                            kwargs={"dry_run": True}, queue="low", tz="Europe/Berlin", catch_up=True, retry=2)
    assert hourly == Entry(name="hourly", cron="@hourly", job="Billing::InvoiceJob",
                           from_job=frozenset({"queue", "retry"}))
    assert (hourly.queue, hourly.tz, hourly.catch_up, hourly.retry, hourly.args) == (
        "default", "UTC", False, True, ())  # until bind_jobs gives it its class's
    assert entries_from_config(None) == []
    assert entries_from_config([]) == []


NIGHTLY = {"name": "nightly-cleanup", "cron": "0 3 * * *", "class": "PeriodicCleanupJob"}


@pytest.mark.parametrize(("changes", "key", "message"), [
    ({"cron": "61 * * * *"}, "periodic.nightly-cleanup.cron",
     "bad cron expression: '61 * * * *': minute 61 is out of range 0-59"),
    ({"cron": "0 3 * *"}, "periodic.nightly-cleanup.cron", "expected 5 fields"),
    ({"cron": 5}, "periodic.nightly-cleanup.cron", "must be a string"),
    ({"tz": "Europe/Berlln"}, "periodic.nightly-cleanup.tz", "unknown time zone 'Europe/Berlln'"),
    ({"tz": "../etc/passwd"}, "periodic.nightly-cleanup.tz", "unknown time zone"),
    ({"class": None}, "periodic.nightly-cleanup.class", "must be a job's name"),
    ({"args": "x"}, "periodic.nightly-cleanup.args", "must be a list"),
    ({"kwargs": [1]}, "periodic.nightly-cleanup.kwargs", "must be a mapping"),
    ({"kwargs": {1: 2}}, "periodic.nightly-cleanup.kwargs", "keyword names must be str"),
    ({"queue": 5}, "periodic.nightly-cleanup.queue", "must be a queue name"),
    ({"catch_up": "yes"}, "periodic.nightly-cleanup.catch_up", "must be true or false"),
    ({"retry": -1}, "periodic.nightly-cleanup.retry", "must be true, false or a number"),
    ({"queu": "low"}, "periodic.nightly-cleanup.queu", "unknown setting"),
    ({"name": "nightly cleanup"}, "periodic.nightly cleanup", "must be 1 to 200 letters"),
    ({"name": "a:b"}, "periodic.a:b", "must be 1 to 200 letters"),
    ({"name": None}, "periodic[1].name", "is required"),
])
def test_bad_entries_are_rejected_naming_the_entry(changes, key, message):
    bad = {**NIGHTLY, **changes}
    with pytest.raises(ConfigError) as caught:
        entries_from_config([{**NIGHTLY, "name": "fine"}, bad])
    assert caught.value.key == key
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{key}: ")


def test_missing_settings_and_bad_shapes():
    for missing in ("cron", "class"):
        raw = {k: v for k, v in NIGHTLY.items() if k != missing}
        with pytest.raises(ConfigError, match=f"periodic.nightly-cleanup.{missing}: is required"):
            entries_from_config([raw])
    with pytest.raises(ConfigError, match=r"^periodic: must be a list"):
        entries_from_config({"nightly": NIGHTLY})
    with pytest.raises(ConfigError, match=r"^periodic\[0\]: must be a mapping"):
        entries_from_config(["0 3 * * *"])
    with pytest.raises(ConfigError, match=r"^periodic.nightly-cleanup: two entries have this name"):
        entries_from_config([NIGHTLY, {**NIGHTLY, "cron": "@daily"}])


def test_declared_from_python_with_a_job_class_or_a_name():
    nightly = kiq.periodic("0 3 * * *", PeriodicCleanupJob, name="nightly-cleanup", args=[7],
                           tz=ZoneInfo("Europe/Berlin"))
    ruby = kiq.periodic("*/5 * * * *", "Billing::InvoiceJob", name="invoices", kwargs={"dry": False},
                        queue="billing", catch_up=True)
    assert (nightly.job, nightly.queue, nightly.retry, nightly.args, nightly.tz) == (
        "PeriodicCleanupJob", "maintenance", 3, (7,), "Europe/Berlin")
    assert (ruby.job, ruby.queue, ruby.retry, ruby.kwargs, ruby.catch_up) == (
        "Billing::InvoiceJob", "billing", True, {"dry": False}, True)
    assert declared() == [nightly, ruby]
    assert kiq.periodic("0 3 * * *", PeriodicCleanupJob, name="nightly-cleanup", args=[7],
                        tz="Europe/Berlin") == nightly  # the same again (a module imported twice) is fine
    with pytest.raises(ConfigError, match=r"^periodic.nightly-cleanup: declared twice"):
        kiq.periodic("0 4 * * *", PeriodicCleanupJob, name="nightly-cleanup")
    assert declared() == [nightly, ruby]


def test_declared_entries_are_validated_too():
    with pytest.raises(ConfigError, match=r"^periodic.nightly.cron: bad cron expression: '0 25 \* \* \*'"):
        kiq.periodic("0 25 * * *", PeriodicCleanupJob, name="nightly")
    with pytest.raises(ConfigError, match=r"^periodic.nightly.args: args\[0\]: "):
        kiq.periodic("0 3 * * *", PeriodicCleanupJob, name="nightly", args=[object()])
    with pytest.raises(ConfigError, match=r"^periodic.nightly.class: must be a kiq.Job subclass"):
        kiq.periodic("0 3 * * *", dict, name="nightly")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^periodic.nightly.args: must be a list"):
        kiq.periodic("0 3 * * *", PeriodicCleanupJob, name="nightly", args="abc")
    assert declared() == []


def test_entries_that_name_no_queue_or_retry_take_their_job_classes():
    from_file = entries_from_config([
        NIGHTLY,
        {**NIGHTLY, "name": "given", "queue": "low", "retry": False},
        {**NIGHTLY, "name": "no-retry-given", "retry": 0},
    ])
    by_name = kiq.periodic("@daily", "PeriodicCleanupJob", name="by-name")
    bound = bind_jobs([*from_file, by_name], kiq.job.registered())
    assert [(e.name, e.queue, e.retry) for e in bound] == [
        ("nightly-cleanup", "maintenance", 3), ("given", "low", False), ("no-retry-given", "maintenance", 0),
        ("by-name", "maintenance", 3)]
    assert all(e.from_job == frozenset() for e in bound)
    assert bound[0].payload(0)["queue"] == "maintenance"


def test_unknown_jobs_and_names_used_twice_across_file_and_python():
    entries = entries_from_config([NIGHTLY, {**NIGHTLY, "name": "ruby", "class": "Billing::InvoiceJob"}])
    bind_jobs(entries[:1], kiq.job.registered())
    with pytest.raises(ConfigError, match=r"^periodic.ruby.class: unknown job 'Billing::InvoiceJob'"):
        bind_jobs(entries, kiq.job.registered())
    kiq.periodic("@daily", PeriodicCleanupJob, name="nightly-cleanup")
    with pytest.raises(ConfigError, match=r"^periodic.nightly-cleanup: two entries have this name"):
        merge(entries, declared())


# -- firing in Redis ---------------------------------------------------------------------


def test_the_payload_is_a_sidekiq_job_hash_that_names_its_entry(redis_server, r):
    keys = Keys("shop")
    nightly = entry("nightly", "0 3 * * *", job="PeriodicCleanupJob", args=(1, dt.date(2024, 5, 1)),
                    kwargs={"dry_run": True}, queue="maintenance", retry=3, tz="Europe/Berlin")
    start = now()
    tick = nightly.next_after(start)
    periodic = Periodic(connect(redis_server.url), keys, [nightly], now=start)
    assert periodic.next_wakeup(start) == tick
    before = time.time()
    assert periodic.fire_due(tick) == [("nightly", int(tick.timestamp()))]
    [raw] = r.lrange("shop:queue:maintenance", 0, -1)
    payload = json.loads(raw)
    decode(raw)  # what a kiq worker checks before running a job
    assert set(payload) == {"class", "args", "kwargs", "jid", "queue", "retry", "created_at", "enqueued_at",
                            "periodic"}
    assert payload["class"] == "PeriodicCleanupJob"
    assert payload["args"] == kiq.serialize.serialize_args([1, dt.date(2024, 5, 1)])
    assert payload["kwargs"] == {"dry_run": True}
    assert JID.fullmatch(payload["jid"])
    assert (payload["queue"], payload["retry"]) == ("maintenance", 3)
    assert before <= payload["enqueued_at"] <= time.time()
    assert payload["periodic"] == {"name": "nightly", "tick": int(tick.timestamp())}
    assert r.smembers("shop:queues") == {"maintenance"}
    assert r.hget("shop:kiq:periodic:nightly", "jid") == payload["jid"]
    assert r.zrange("shop:kiq:periodic:nightly:ticks", 0, -1) == [str(int(tick.timestamp()))]
    assert periodic.next_wakeup() == nightly.next_after(tick)


class Master(threading.Thread):
    """A master's scheduler thread, reduced to its periodic part."""

    def __init__(self, periodic: Periodic) -> None:
        super().__init__(daemon=True)
        self.periodic = periodic
        self.stopping = threading.Event()
        self.killed = False
        self.fired: list[tuple[str, int]] = []  # what fire_due says this master enqueued

    def run(self) -> None:
        while not self.stopping.is_set():
            self.fired += self.periodic.fire_due()
            wakeup = self.periodic.next_wakeup()
            assert wakeup is not None
            self.stopping.wait(min(1.0, max(0.0, (wakeup - now()).total_seconds())))
        if not self.killed:
            self.fired += self.periodic.fire_due()  # a graceful stop still tries what is due

    def kill(self) -> None:
        """Stop without another try, as if the process died."""
        self.killed = True
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        assert not self.is_alive()

    def last_tick(self) -> int:
        return max((tick for _, tick in self.fired), default=0)


def test_three_masters_enqueue_each_tick_once_and_losing_the_last_firer_changes_nothing(redis_server, r):
    every_second = entry()
    first = now()
    masters = [Master(Periodic(connect(redis_server.url), Keys(), [every_second])) for _ in range(3)]
    started = now()  # every master exists: each tries every tick after this
    for master in masters:
        master.start()
    time.sleep(2.6)
    firer = max(masters, key=Master.last_tick)
    assert firer.last_tick() > 0
    firer.kill()
    killed = now()
    time.sleep(2.6)
    stopped = now()
    for master in masters:
        if master is not firer:
            master.stop()
    counts = per_tick(r, "every-second")
    assert set(counts.values()) == {1}, counts
    expected = ticks_between(started, stopped)
    assert set(expected) <= set(counts), (expected, counts)
    assert set(counts) <= set(ticks_between(first, seconds(stopped, 3)))
    assert len(ticks_between(killed, stopped)) >= 2
    assert firer.last_tick() <= math.floor(killed.timestamp())
    assert sum(len(m.fired) for m in masters) == len(counts)


def test_a_late_starter_does_not_fire_past_ticks(redis_server, r):
    start = now()
    early = Periodic(connect(redis_server.url), Keys(), [entry()], now=start)
    assert len(early.fire_due(seconds(start, 2.5))) == len(ticks_between(start, seconds(start, 2.5)))
    # ticks after 2.5 s are fired by nobody until a master starts at 5.5 s
    late = Periodic(connect(redis_server.url), Keys(), [entry()], now=seconds(start, 5.5))
    assert late.fire_due(seconds(start, 5.5)) == []
    assert len(late.fire_due(seconds(start, 6.5))) == 1
    assert set(per_tick(r, "every-second")) == set(ticks_between(start, seconds(start, 2.5))) | set(
        ticks_between(seconds(start, 5.5), seconds(start, 6.5)))
    # the early master was running all along (only late): it fires the ticks nobody did, none twice
    early.fire_due(seconds(start, 6.5))
    counts = per_tick(r, "every-second")
    assert set(counts) == set(ticks_between(start, seconds(start, 6.5)))
    assert set(counts.values()) == {1}


def test_catch_up_fires_only_the_last_missed_tick_and_only_once(redis_server, r):
    catching, plain = entry("catching", catch_up=True), entry("plain")
    start = now()
    before = Periodic(connect(redis_server.url), Keys(), [catching, plain], now=start)
    assert sorted(name for name, _ in before.fire_due(seconds(start, 1))) == ["catching", "plain"]
    [fired] = per_tick(r, "catching")
    # no master from 1 s to 4.5 s; two start together
    restart = seconds(start, 4.5)
    missed = math.floor(restart.timestamp())
    assert missed - fired >= 3
    masters = [Periodic(connect(redis_server.url), Keys(), [catching, plain], now=restart) for _ in range(2)]
    assert [len(m.fire_due(restart)) for m in masters] == [1, 0]
    assert sorted(per_tick(r, "catching").elements()) == [fired, missed]
    assert sorted(per_tick(r, "plain").elements()) == [fired]
    # restarting again catches up nothing: the last tick is not missed
    again = Periodic(connect(redis_server.url), Keys(), [catching, plain], now=restart)
    assert again.fire_due(restart) == []
    # an entry never seen before has missed nothing, and a changed schedule starts afresh
    fresh = entry("fresh", catch_up=True)
    changed = entry("catching", "*/2 * * * * *", catch_up=True)
    later = seconds(start, 7.5)
    assert Periodic(connect(redis_server.url), Keys(), [fresh, changed], now=later).fire_due(later) == []
    assert r.llen("queue:default") == 3


def test_ticks_later_than_the_window_are_skipped(redis_server, r):
    catching = entry("stalled", catch_up=True)
    current = now()
    periodic = Periodic(connect(redis_server.url), Keys(), [catching], now=seconds(current, -600), window=30)
    fired = len(periodic.fire_due(current))
    counts = per_tick(r, "stalled")
    assert 25 <= fired == len(counts) <= 30  # the newest 30 s only; the edge may go either way under load
    assert set(counts.values()) == {1}
    assert min(counts) > current.timestamp() - 32
    wakeup = periodic.next_wakeup()
    assert wakeup is not None and wakeup > current


def test_describe_shows_last_and_next(redis_server, r, conn):
    nightly = entry("nightly", "30 2 * * *", tz="Europe/Berlin", queue="low")
    start = now()
    [row] = describe(conn, Keys(), [nightly], start)
    assert row == {"name": "nightly", "cron": "30 2 * * *", "tz": "Europe/Berlin",
                   "class": "PeriodicCleanupJob", "queue": "low", "catch_up": False, "last": None,
                   "last_jid": None, "next": nightly.next_after(start)}
    tick = nightly.next_after(start)
    Periodic(conn, Keys(), [nightly], now=start).fire_due(tick)
    [job] = jobs(r, "low")
    [row] = describe(conn, Keys(), [nightly], tick)
    assert (row["last"], row["last_jid"]) == (tick, job["jid"])
    assert row["next"] == nightly.next_after(tick) > tick
    assert row["last"].tzinfo is not None


@pytest.mark.parametrize("last", ["abc", "1.5", "99999999999999999"])
def test_describe_shows_no_last_tick_for_a_state_something_else_wrote(redis_server, r, conn, last):
    nightly, hourly = entry("nightly", "30 2 * * *"), entry("hourly", "0 * * * *")
    r.hset("kiq:periodic:nightly", "last", last)
    r.set("kiq:periodic:hourly", "x")
    rows = describe(conn, Keys(), [nightly, hourly], now())
    assert [(row["name"], row["last"]) for row in rows] == [("nightly", None), ("hourly", None)]


def test_a_reload_never_fires_a_tick_twice(redis_server, r, conn):
    """A reload is a new generation with a new Periodic, even one whose clock starts earlier:
    the ticks the old one fired are in Redis, and none fires twice."""
    start = now()
    periodic = Periodic(conn, Keys(), [entry(args=(1,))], now=start)
    first = len(periodic.fire_due(seconds(start, 2.5)))
    assert first >= 2
    generation = Periodic(connect(redis_server.url), Keys(), [entry(args=(2,))], now=start)
    assert generation.fire_due(seconds(start, 2.5)) == []
    assert len(generation.fire_due(seconds(start, 3.5))) == 1
    assert jobs(r)[-1]["args"] == [2]
    every_two = entry(cron="*/2 * * * * *")
    changed = Periodic(connect(redis_server.url), Keys(), [every_two], now=seconds(start, 3.5))
    assert changed.fire_due(seconds(start, 3.5)) == []
    changed.fire_due(seconds(start, 6.5))
    generation.fire_due(seconds(start, 6.5))
    counts = per_tick(r, "every-second")
    assert set(counts.values()) == {1}
    assert Periodic(conn, Keys(), []).next_wakeup() is None


def test_a_redis_failure_leaves_the_ticks_to_try_again(redis_server, r):
    start = now()
    periodic = Periodic(connect(redis_server.url), Keys(), [entry()], now=start)
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        periodic.fire_due(seconds(start, 1.5))
    redis_server.start()
    assert len(periodic.fire_due(seconds(start, 1.5))) == len(ticks_between(start, seconds(start, 1.5)))
    fired = per_tick(redis_server.client(), "every-second")
    assert set(fired) == set(ticks_between(start, seconds(start, 1.5)))


def test_an_entry_whose_queue_key_is_of_another_type_waits_and_the_others_fire(redis_server, r):
    start = now()
    broken, fine = entry("broken", queue="mail"), entry("fine")
    periodic = Periodic(connect(redis_server.url), Keys(), [broken, fine], now=start)
    r.hset("queue:mail", "a", "b")
    fired = periodic.fire_due(seconds(start, 1.5))
    assert {name for name, _ in fired} == {"fine"}
    assert r.zcard("kiq:periodic:broken:ticks") == 0  # no tick marked fired without its job
    r.delete("queue:mail")
    assert "broken" in {name for name, _ in periodic.fire_due(seconds(start, 2.5))}
    everyone = len(ticks_between(start, seconds(start, 2.5)))  # the ticks it missed too: none skipped
    assert r.llen("queue:mail") == r.zcard("kiq:periodic:broken:ticks") == everyone


def test_a_blocked_entry_is_tried_again_a_pause_later_not_at_once(redis_server, r):
    """While its queue key is of another type, a blocked entry's wake-up is BLOCKED_PAUSE after
    its try, not its overdue tick (a supervisor waking for it at once spun a core)."""
    from kiq.periodic import BLOCKED_PAUSE

    start = now()
    periodic = Periodic(connect(redis_server.url), Keys(), [entry("broken", queue="mail")], now=start)
    r.set("queue:mail", "a string")
    tried = seconds(start, 1.5)
    assert periodic.fire_due(tried) == []
    assert periodic.next_wakeup() == tried + BLOCKED_PAUSE
    assert periodic.fire_due(seconds(start, 2.0)) == []  # held: no script call, nothing fired
    r.delete("queue:mail")
    fired = periodic.fire_due(tried + BLOCKED_PAUSE)
    assert len(fired) == len(ticks_between(start, tried + BLOCKED_PAUSE))
    assert periodic.next_wakeup() > tried + BLOCKED_PAUSE


def past_next_second() -> None:
    """Sleep until just past the clock's next whole second, where an every-second tick falls
    due (the host's clock and Redis's are one here)."""
    time.sleep(math.ceil(time.time()) - time.time() + 0.05)


def put_clock_off(monkeypatch: pytest.MonkeyPatch, by: dt.timedelta) -> None:
    """This host's clock, as kiq.periodic reads it, ``by`` off (Redis's stays right)."""
    periodic_module = importlib.import_module("kiq.periodic")  # kiq.periodic is also a function
    real_aware = periodic_module._aware
    monkeypatch.setattr(periodic_module, "_aware", lambda moment: real_aware(moment) + by
                        if moment is None else real_aware(moment))


def test_a_host_whose_clock_is_fast_fires_no_tick_before_redis_reaches_it(redis_server, r, monkeypatch):
    """Redis's clock judges every tick: a master ten minutes fast offers ticks still ahead of
    it, which wait (said once) instead of firing early, in a burst."""
    fast = dt.timedelta(minutes=10)
    put_clock_off(monkeypatch, fast)
    logged: list[str] = []
    periodic = Periodic(connect(redis_server.url), Keys(), [entry()], now=now() + fast)
    periodic.log = periodic.log.bind()
    periodic.log.warning = lambda event, **fields: logged.append(event)  # type: ignore[method-assign]
    past_next_second()
    assert periodic.fire_due() == [] and periodic.fire_due() == []
    assert r.llen("queue:default") == 0 and r.zcard("kiq:periodic:every-second:ticks") == 0
    assert len(logged) == 1 and "this host's clock is ahead of Redis's" in logged[0]
    monkeypatch.undo()  # the clock put right: ticks fire again
    fresh = Periodic(connect(redis_server.url), Keys(), [entry()], now=now())
    past_next_second()
    assert fresh.fire_due()


def test_a_host_whose_clock_is_slow_fires_no_tick_from_before_the_schedule_existed(redis_server, r,
                                                                                    monkeypatch):
    """A master ten minutes slow joins one that recorded the schedule: its first ticks are from
    before any master ran, history, not missed ticks."""
    first = Periodic(connect(redis_server.url), Keys(), [entry()])
    first.fire_due()  # records the schedule (and fires a tick, should a second have begun)
    put_clock_off(monkeypatch, -dt.timedelta(minutes=10))
    slow = Periodic(connect(redis_server.url), Keys(), [entry()])
    past_next_second()
    already = r.llen("queue:default")
    assert slow.fire_due() == []
    assert r.llen("queue:default") == already == r.zcard("kiq:periodic:every-second:ticks")


def test_a_host_whose_clock_is_slow_fires_no_tick_missed_while_no_master_ran(redis_server, r, monkeypatch):
    """The schedule is a minute old, no master ran for most of that minute, then one with a
    right clock fires a tick. A master 30 s slow offers the ticks of that downtime: skipped,
    as missed ticks are, and none fires twice."""
    minute_ago = now() - dt.timedelta(seconds=60)
    Periodic(connect(redis_server.url), Keys(), [entry()], now=minute_ago).fire_due(minute_ago)
    right = Periodic(connect(redis_server.url), Keys(), [entry()])
    past_next_second()
    fired = right.fire_due()
    assert fired  # a tick or two, as the second boundaries fall
    put_clock_off(monkeypatch, -dt.timedelta(seconds=30))
    slow = Periodic(connect(redis_server.url), Keys(), [entry()])
    past_next_second()
    assert slow.fire_due() == []
    assert r.llen("queue:default") == len(fired)


class PeriodicTracedJob(kiq.Job):
    backtrace = 5

    def perform(self) -> None:
        pass


def test_a_periodic_job_carries_its_class_backtrace_option():
    assert entry(job="PeriodicTracedJob").payload(1)["backtrace"] == 5
    assert "backtrace" not in entry().payload(1)

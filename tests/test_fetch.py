"""Unit tests for kiq.fetch: taking jobs into in-progress lists, acknowledging them, giving them back."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from conftest import wait_for

from kiq.connection import connect
from kiq.execution import Tallies
from kiq.fetch import PREFETCH_CEILING, PREFETCH_HORIZON, Fetcher
from kiq.heartbeat import Heartbeat
from kiq.keys import Keys
from kiq.recovery import Recovery
from kiq.retry import DEAD_MAX_JOBS, DEAD_TIMEOUT, SUCCESS, Outcome
from kiq.roundtrip import QueueOrder, Unit
from kiq.watch import LOOK_SECONDS, WATCH_MAX

IDENT = "host:1:abc"
MakeFetcher = Callable[..., Fetcher]


@pytest.fixture
def make_fetcher(redis_server, r) -> Iterator[MakeFetcher]:
    """Start fetchers on this test's Redis; every one is closed when the test ends."""
    started: list[Fetcher] = []

    def make(queues: list[tuple[str, int]] | None = None, strict: bool = True, concurrency: int = 2,
             namespace: str = "", identity: str = IDENT, **extra: Any) -> Fetcher:
        order = QueueOrder(queues or [("default", 1)], strict)
        fetcher = Fetcher(redis_server.url, Keys(namespace), identity, order, concurrency, **extra)
        fetcher.start()
        started.append(fetcher)
        return fetcher

    yield make
    for fetcher in started:
        fetcher.quiet()
        unblock_watchers(r, fetcher)
        fetcher.close()


def unblock_watchers(r, fetcher: Fetcher, timeout: float = 3.0) -> None:
    """End the BLMOVE of threads watching queues now rather than at its timeout, so that
    closing is quick. To a watcher this looks exactly like a BLMOVE that timed out; once
    quiet, it then leaves its queue and its take() returns None.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and fetcher.watchers.watching:
        for client in r.client_list():
            if client["name"] == f"kiq-wait-{fetcher.identity}" and "b" in client["flags"]:
                r.client_unblock(client["id"])
        time.sleep(0.005)


def start_take(fetcher: Fetcher) -> queue.Queue[Unit | None]:
    """Call take() in another thread; the result arrives on the returned queue."""
    result: queue.Queue[Unit | None] = queue.Queue()
    threading.Thread(target=lambda: result.put(fetcher.take()), daemon=True).start()
    return result


class Takers:
    """``fetcher.threads`` threads taking jobs as a worker's do (one per job slot, one per
    queue to watch). The test gets what they take and acknowledges it, and the thread that
    took it then takes again, as a worker's thread does after running a job."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.taken: queue.Queue[tuple[Unit, queue.Queue[Outcome]]] = queue.Queue()
        self.replies: dict[Unit, queue.Queue[Outcome]] = {}
        for _ in range(fetcher.threads):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while (unit := self.fetcher.take()) is not None:
            reply: queue.Queue[Outcome] = queue.Queue()
            self.taken.put((unit, reply))
            self.fetcher.done(unit, reply.get())

    def get(self, timeout: float = 5.0) -> Unit:
        unit, reply = self.taken.get(timeout=timeout)
        self.replies[unit] = reply
        return unit

    def done(self, unit: Unit, outcome: Outcome) -> None:
        self.replies.pop(unit).put(outcome)


def take(fetcher: Fetcher, timeout: float = 5.0) -> Unit | None:
    try:
        return start_take(fetcher).get(timeout=timeout)
    except queue.Empty:
        fetcher.quiet()  # frees the blocked take()
        raise AssertionError(f"take() returned nothing within {timeout}s") from None


def push(r, queue_name: str, *jobs: str, prefix: str = "") -> None:
    for job in jobs:
        r.lpush(f"{prefix}queue:{queue_name}", job)


def wip(r, queue_name: str = "default", identity: str = IDENT, prefix: str = "") -> list[str]:
    return r.lrange(f"{prefix}kiq:wip:{identity}|{queue_name}", 0, -1)


def consume(r, queue_name: str, prefix: str = "") -> list[str]:
    return list(reversed(r.lrange(f"{prefix}queue:{queue_name}", 0, -1)))


def today() -> set[str]:
    """Today's UTC date as Sidekiq writes it in stat keys (both sides of a midnight, to be safe)."""
    return {time.strftime("%Y-%m-%d", time.gmtime(time.time() + delta)) for delta in (-5, 0)}


def daily(r, stat: str) -> int:
    return sum(int(r.get(f"stat:{stat}:{date}") or 0) for date in today())


def blocked_watchers(r) -> int:
    """Clients blocked in BLMOVE: the threads watching an idle fetcher's queues."""
    return int(r.info("clients")["blocked_clients"])


# Taking and acknowledging


def test_the_first_round_trip_registers_the_in_progress_lists(r, make_fetcher):
    """Without a heartbeat (a worker's first beat registers them), the first round trip finds no
    entry for the worker and reclaims one, registering every list."""
    make_fetcher([("critical", 1), ("default", 1)])
    wait_for(lambda: r.smembers("kiq:wip") == {f"{IDENT}|critical", f"{IDENT}|default"})


def test_taken_jobs_stay_in_progress_until_acknowledged(r, make_fetcher):
    push(r, "default", *(f"j{n}" for n in range(5)))
    fetcher = make_fetcher(concurrency=3)
    units = [take(fetcher) for _ in range(3)]
    assert units == [Unit("default", "j0"), Unit("default", "j1"), Unit("default", "j2")]
    in_progress = wip(r)
    assert {"j0", "j1", "j2"} <= set(in_progress)
    assert not {"j0", "j1", "j2"} & set(r.lrange("queue:default", 0, -1))
    assert fetcher.busy == 3

    fetcher.done(units[1], SUCCESS)
    wait_for(lambda: "j1" not in wip(r))
    assert {"j0", "j2"} <= set(wip(r))
    assert r.get("stat:processed") == "1"
    assert daily(r, "processed") == 1
    assert fetcher.busy == 2

    fetcher.done(units[0], SUCCESS)
    fetcher.done(units[2], SUCCESS)
    wait_for(lambda: r.get("stat:processed") == "3")
    assert not {"j0", "j1", "j2"} & set(wip(r))
    assert daily(r, "processed") == 3
    assert r.get("stat:failed") is None


def test_failed_outcomes_count_in_stat_failed(r, make_fetcher):
    push(r, "default", "ok", "dropped", "retried", "died")
    fetcher = make_fetcher(concurrency=4)
    units = {unit.payload: unit for unit in (take(fetcher) for _ in range(4))}
    fetcher.done(units["ok"], SUCCESS)
    fetcher.done(units["dropped"], Outcome(failed=True))
    fetcher.done(units["retried"], Outcome(True, "retry", '{"jid":"r"}', time.time() + 60))
    fetcher.done(units["died"], Outcome(True, "dead", '{"jid":"d"}', time.time()))
    wait_for(lambda: r.get("stat:processed") == "4")
    wait_for(lambda: wip(r) == [])
    assert r.get("stat:failed") == "3"
    assert daily(r, "processed") == 4 and daily(r, "failed") == 3
    for date in today():
        for stat in ("processed", "failed"):
            if r.exists(f"stat:{stat}:{date}"):
                assert r.ttl(f"stat:{stat}:{date}") > 365 * 24 * 3600
    assert r.llen("queue:default") == 0


def test_retry_outcome_lands_in_retry_with_its_score(r, make_fetcher):
    push(r, "default", '{"jid":"1"}')
    fetcher = make_fetcher()
    unit = take(fetcher)
    retried = json.dumps({"jid": "1", "retry_count": 0, "error_message": "boom"})
    fetcher.done(unit, Outcome(True, "retry", retried, 1_900_000_123.25))
    wait_for(lambda: r.zcard("retry") == 1)
    assert r.zrange("retry", 0, -1, withscores=True) == [(retried, 1_900_000_123.25)]
    wait_for(lambda: wip(r) == [])
    assert r.zcard("dead") == 0


def test_dead_outcome_lands_in_dead(r, make_fetcher):
    push(r, "default", '{"jid":"2"}')
    fetcher = make_fetcher()
    unit = take(fetcher)
    died = json.dumps({"jid": "2", "error_message": "out of retries"})
    now = time.time()
    fetcher.done(unit, Outcome(True, "dead", died, now))
    wait_for(lambda: r.zcard("dead") == 1)
    assert r.zrange("dead", 0, -1, withscores=True) == [(died, now)]
    wait_for(lambda: wip(r) == [])
    assert r.zcard("retry") == 0


def test_dead_set_is_trimmed_by_age_and_size(r, make_fetcher):
    now = time.time()
    with r.pipeline(transaction=False) as pipe:
        for n in range(DEAD_MAX_JOBS):
            pipe.zadd("dead", {f"recent-{n}": now - 100 - n})
        for n in range(3):
            pipe.zadd("dead", {f"ancient-{n}": now - DEAD_TIMEOUT - 100 - n})
        pipe.execute()
    push(r, "default", "job")
    fetcher = make_fetcher()
    fetcher.done(take(fetcher), Outcome(True, "dead", "newest", now))
    wait_for(lambda: r.zscore("dead", "newest") is not None)
    assert DEAD_MAX_JOBS == 10_000 and DEAD_TIMEOUT == 180 * 24 * 3600
    assert r.zcard("dead") == DEAD_MAX_JOBS
    assert r.zscore("dead", "ancient-0") is None
    assert r.zscore("dead", f"recent-{DEAD_MAX_JOBS - 1}") is None  # the oldest one makes room
    assert r.zscore("dead", f"recent-{DEAD_MAX_JOBS - 2}") is not None


def test_concurrent_takers_get_every_job_exactly_once(r, make_fetcher):
    count = 300
    push(r, "default", *(f"j{n}" for n in range(count)))
    fetcher = make_fetcher(concurrency=4)
    seen: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            unit = fetcher.take()
            if unit is None:
                return
            with lock:
                seen.append(unit.payload)
            fetcher.done(unit, SUCCESS)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(fetcher.threads)]
    for thread in threads:
        thread.start()
    wait_for(lambda: r.get("stat:processed") == str(count))
    fetcher.quiet()
    for thread in threads:
        thread.join(5)
    assert sorted(seen) == sorted(f"j{n}" for n in range(count))
    assert wip(r) == [] and r.llen("queue:default") == 0


def run_jobs(fetcher: Fetcher, job_seconds: float) -> Callable[[], None]:
    """Run jobs of ``job_seconds`` on a worker's threads until the returned stop()."""
    stopping = threading.Event()

    def work() -> None:
        while not stopping.is_set():
            unit = fetcher.take()
            if unit is None:
                return
            started = time.perf_counter()
            time.sleep(job_seconds)
            fetcher.done(unit, SUCCESS, time.perf_counter() - started)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(fetcher.threads)]
    for thread in threads:
        thread.start()

    def stop() -> None:
        stopping.set()
        fetcher.quiet()
        for thread in threads:
            thread.join(5)

    return stop


def most_held(r, seconds: float) -> int:
    """The most jobs the worker's in-progress list held, sampled for ``seconds``. An absence is
    asserted with it, so it samples for a fixed time rather than waiting for a condition."""
    most, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, r.llen(f"kiq:wip:{IDENT}|default"))
        time.sleep(0.002)
    return most


def test_short_jobs_get_a_prefetch_up_to_the_ceiling(r, make_fetcher):
    push(r, "default", *(f"j{n}" for n in range(20_000)))
    fetcher = make_fetcher(concurrency=2)
    stop = run_jobs(fetcher, job_seconds=0)
    try:
        wait_for(lambda: len(wip(r)) > 2 + 20, timeout=15, interval=0.001)
    finally:
        stop()
    assert 0 < fetcher.job_seconds < 0.001
    assert fetcher.capacity <= 2 + PREFETCH_CEILING * 20


def most_held_running(r, fetcher: Fetcher, job_seconds: float, ready: Callable[[], bool],
                      seconds: float = 0.3) -> int:
    """The most jobs the worker held while running jobs of ``job_seconds``, sampled for
    ``seconds`` once ``ready()``."""
    stop = run_jobs(fetcher, job_seconds=job_seconds)
    try:
        wait_for(ready)
        return most_held(r, seconds)
    finally:
        stop()


def test_jobs_longer_than_the_horizon_get_no_prefetch(r, make_fetcher):
    """A worker holds no job that another worker could start now (Celery's prefetch trap)."""
    push(r, "default", *(f"j{n}" for n in range(200)))
    fetcher = make_fetcher(concurrency=2)
    job_seconds = 2 * 2 * PREFETCH_HORIZON  # two slots start one job each per job_seconds / 2
    most = most_held_running(r, fetcher, job_seconds, lambda: fetcher.job_seconds > 0, seconds=0.5)
    assert most == 2 and fetcher.prefetch == 0


def test_jobs_that_turn_long_give_back_the_jobs_held_behind_them(r, make_fetcher):
    """Very short jobs size a large prefetch, which then takes long jobs too: once every slot
    has run one for PREFETCH_STALL with none finished, the held ones go back to the front of
    the queue, in order, for a worker with a free slot, and the prefetch starts again at 0."""
    push(r, "default", *(f"s{n}" for n in range(1_000)), *(f"long{n}" for n in range(30)))
    fetcher = make_fetcher(concurrency=2)
    stopping = threading.Event()

    def work() -> None:
        while (unit := fetcher.take()) is not None:
            started = time.perf_counter()
            while unit.payload.startswith("long") and not stopping.is_set():
                time.sleep(0.01)
            fetcher.done(unit, SUCCESS, time.perf_counter() - started)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(fetcher.threads)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: any(u.payload.startswith("long") for u in list(fetcher._buffer)), interval=0.0005)
        wait_for(lambda: r.llen("queue:default") == 28 and len(wip(r)) == 2)
        assert consume(r, "default") == [f"long{n}" for n in range(2, 30)]
        assert fetcher.prefetch == 0 and not fetcher._buffer
    finally:
        stopping.set()
        fetcher.quiet()
        for thread in threads:
            thread.join(5)


def test_the_prefetch_setting_fixes_it(r, make_fetcher):
    """A number is the prefetch from the first job on, whatever the jobs' run times."""
    push(r, "default", *(f"j{n}" for n in range(2_000)))
    fetcher = make_fetcher(concurrency=2, prefetch=3)
    assert fetcher.prefetch == 3
    most = most_held_running(r, fetcher, 2 * 2 * PREFETCH_HORIZON, lambda: fetcher.job_seconds > 0)
    assert most == 2 + 3 and fetcher.prefetch == 3


def test_prefetch_zero_holds_only_the_running_jobs(r, make_fetcher):
    push(r, "default", *(f"j{n}" for n in range(2_000)))
    fetcher = make_fetcher(concurrency=2, prefetch=0)
    most = most_held_running(r, fetcher, 0, lambda: fetcher.job_seconds > 0)
    assert most == 2 and fetcher.capacity == 2


def test_payload_bytes_that_are_not_utf8_are_acknowledged_exactly(redis_server, r, make_fetcher):
    raw = redis.Redis.from_url(redis_server.url)
    odd = b'{"class":"\xff\xfe"}'
    raw.lpush("queue:default", odd)
    fetcher = make_fetcher()
    unit = take(fetcher)
    assert unit.payload.encode("utf-8", "surrogateescape") == odd
    fetcher.done(unit, Outcome(True, "dead", '{"class":"kiq.InvalidPayload"}', time.time()))
    wait_for(lambda: raw.llen(f"kiq:wip:{IDENT}|default") == 0)
    assert r.zcard("dead") == 1


def test_namespace(r, make_fetcher):
    push(r, "default", "a", "b", prefix="app:")
    push(r, "default", "not-ours")
    fetcher = make_fetcher(namespace="app")
    first = take(fetcher)
    assert first == Unit("default", "a")
    assert "a" in wip(r, prefix="app:")
    assert r.smembers("app:kiq:wip") == {f"{IDENT}|default"}
    fetcher.done(first, SUCCESS)
    fetcher.done(take(fetcher), Outcome(True, "retry", "b-retried", 1_900_000_000.0))
    wait_for(lambda: r.get("app:stat:processed") == "2")
    assert r.zrange("app:retry", 0, -1) == ["b-retried"]
    assert r.get("app:stat:failed") == "1"
    assert wip(r, prefix="app:") == []
    assert r.lrange("queue:default", 0, -1) == ["not-ours"]
    assert not r.exists("stat:processed", "stat:failed", "retry", "kiq:wip")


# Idle workers and strict order


def test_idle_fetcher_picks_up_a_new_job_at_once_on_every_queue(r, make_fetcher):
    fetcher = make_fetcher([("a", 1), ("b", 1), ("c", 1)], concurrency=2)
    takers = Takers(fetcher)
    for n, name in enumerate(["b", "c", "a", "b", "a", "c"]):
        wait_for(lambda: blocked_watchers(r) == 3)  # one BLMOVE per queue: the fetcher is idle
        pushed = time.monotonic()
        push(r, name, f"{name}{n}")
        unit = takers.get()
        latency = time.monotonic() - pushed
        assert unit == Unit(name, f"{name}{n}")
        # A poller with any sensible interval would miss this often; BLMOVE hands it over at once.
        assert latency < 0.2, f"job on {name} took {latency:.3f}s to reach take()"
        assert f"{name}{n}" in wip(r, name)
        takers.done(unit, SUCCESS)
    wait_for(lambda: r.get("stat:processed") == "6")
    assert all(wip(r, name) == [] for name in "abc")


def test_an_idle_worker_of_many_queues_watches_sixteen_and_polls_the_rest(r, make_fetcher):
    """A blocking connection per queue per worker took Redis's maxclients from the apps that
    enqueue (300 queues x 2 processes: 608 clients). The first 16 queues are watched; a job
    pushed to another reaches an idle worker within its poll, a second or so."""
    names = [f"q{n}" for n in range(20)]
    fetcher = make_fetcher([(name, 1) for name in names], concurrency=2)
    assert fetcher.threads == 2 + WATCH_MAX
    takers = Takers(fetcher)
    wait_for(lambda: blocked_watchers(r) == WATCH_MAX)
    assert sum(1 for c in r.client_list() if c["name"] == f"kiq-wait-{IDENT}") == WATCH_MAX
    for name in ("q19", "q0", "q17"):
        push(r, name, f"job on {name}")
        unit = takers.get(timeout=5)
        assert unit == Unit(name, f"job on {name}")
        takers.done(unit, SUCCESS)
        wait_for(lambda: blocked_watchers(r) == WATCH_MAX)  # idle again
    wait_for(lambda: r.get("stat:processed") == "3")


def test_a_worker_s_extra_threads_never_run_more_than_concurrency_jobs(r, make_fetcher):
    fetcher = make_fetcher([("a", 1), ("b", 1), ("c", 1)], concurrency=2)
    assert fetcher.threads == 5  # 2 job slots and a watcher for each of 3 queues
    takers = Takers(fetcher)
    wait_for(lambda: blocked_watchers(r) == 3)
    for name in "abc":
        push(r, name, *(f"{name}{n}" for n in range(4)))
    held = [takers.get(), takers.get()]
    with pytest.raises(queue.Empty):  # both slots are busy: the other 10 jobs wait
        takers.get(timeout=0.5)
    assert fetcher.busy == 2
    seen = [unit.payload for unit in held]
    while held:
        takers.done(held.pop(), SUCCESS)
        if len(seen) < 12:
            held.append(takers.get())
            seen.append(held[-1].payload)
        assert fetcher.busy <= 2
    assert sorted(seen) == sorted(f"{name}{n}" for name in "abc" for n in range(4))


def test_every_queue_is_watched_while_every_slot_is_busy(r, make_fetcher):
    """With a prefetch (short jobs), a job pushed while the slots are busy is caught at once."""
    fetcher = make_fetcher([("a", 1), ("b", 1)], concurrency=1, prefetch=20)
    takers = Takers(fetcher)
    wait_for(lambda: blocked_watchers(r) == 2)
    push(r, "a", "long")
    long = takers.get()
    wait_for(lambda: blocked_watchers(r) == 2)  # idle again: both queues watched, the slot busy
    push(r, "b", "next")
    wait_for(lambda: "next" in wip(r, "b"))  # caught at once, held until the slot is free
    with pytest.raises(queue.Empty):
        takers.get(timeout=0.3)
    takers.done(long, SUCCESS)
    assert takers.get() == Unit("b", "next")


def test_without_a_prefetch_no_queue_is_watched_while_every_slot_is_busy(r, make_fetcher):
    """Long jobs (or none run yet): a job pushed while the slots are busy stays on its queue,
    where another worker with a free slot can start it."""
    fetcher = make_fetcher([("a", 1), ("b", 1)], concurrency=1)
    takers = Takers(fetcher)
    wait_for(lambda: blocked_watchers(r) == 2)
    push(r, "a", "long")
    long = takers.get()
    wait_for(lambda: blocked_watchers(r) == 0)
    push(r, "b", "next")
    with pytest.raises(queue.Empty):
        takers.get(timeout=0.3)
    assert r.llen("queue:b") == 1 and wip(r, "b") == []
    takers.done(long, SUCCESS)
    assert takers.get() == Unit("b", "next")


def test_jobs_pushed_while_busy_are_fetched_too(r, make_fetcher):
    fetcher = make_fetcher(concurrency=1)
    takers = Takers(fetcher)
    wait_for(lambda: blocked_watchers(r) == 1)
    push(r, "default", *(f"j{n}" for n in range(10)))
    got = []
    for _ in range(10):
        unit = takers.get()
        got.append(unit.payload)
        takers.done(unit, SUCCESS)
    assert got == [f"j{n}" for n in range(10)]


def test_a_suspect_is_taken_by_a_worker_holding_no_job_and_nothing_runs_beside_it(r, make_fetcher,
                                                                                    monkeypatch):
    """A suspect (kiq.recovery) waits for a worker with nothing to do, so that no job waits
    behind it; while it runs, nothing else starts, is taken, or is kept from a watcher."""
    monkeypatch.setattr("kiq.watch.LOOK_SECONDS", 0)
    fetcher = make_fetcher(concurrency=3, prefetch=10)
    takers = Takers(fetcher)
    push(r, "default", *(f"j{n}" for n in range(8)))
    running = [takers.get(), takers.get(), takers.get()]
    r.rpush("kiq:suspects:default", "pill")
    takers.done(running.pop(0), SUCCESS)
    running.append(takers.get())
    wait_for(lambda: r.get("stat:processed") == "1")  # its round trip left the suspect: jobs are held
    assert r.lrange("kiq:suspects:default", 0, -1) == ["pill"]
    for finished in range(2, 9):
        takers.done(running.pop(0), SUCCESS)
        if finished + len(running) < 8:
            running.append(takers.get())
    wait_for(lambda: r.get("stat:processed") == "8")
    suspect = takers.get(timeout=5)
    assert suspect == Unit("default", "pill") and wip(r) == ["pill"]
    push(r, "default", "late")
    with pytest.raises(queue.Empty):  # it runs alone: the late job waits in its queue
        takers.get(timeout=2.5)
    assert consume(r, "default") == ["late"] and wip(r) == ["pill"]
    takers.done(suspect, SUCCESS)
    assert takers.get(timeout=5) == Unit("default", "late")


def test_a_suspect_that_ran_alone_and_ended_loses_its_crash_count(r, make_fetcher, monkeypatch):
    """It did not crash its worker alone: innocent, its count starts afresh, and a single later
    crash cannot bury it."""
    monkeypatch.setattr("kiq.watch.LOOK_SECONDS", 0)
    takers = Takers(make_fetcher(concurrency=2))
    suspect = json.dumps({"class": "Job", "args": [], "jid": "c" * 24, "queue": "default"})
    r.set(f"kiq:recoveries:{'c' * 24}", 3)
    r.rpush("kiq:suspects:default", suspect)
    unit = takers.get(timeout=5)
    assert unit.payload == suspect and r.exists(f"kiq:recoveries:{'c' * 24}")
    takers.done(unit, SUCCESS)
    wait_for(lambda: not r.exists(f"kiq:recoveries:{'c' * 24}"))


def test_an_idle_worker_takes_a_suspect_between_waits(r, make_fetcher):
    fetcher = make_fetcher(concurrency=2)
    takers = Takers(fetcher)
    wait_for(lambda: blocked_watchers(r) == 1)
    r.rpush("kiq:suspects:default", "pill")
    assert takers.get(timeout=LOOK_SECONDS + 3) == Unit("default", "pill")
    assert wip(r) == ["pill"] and not r.exists("kiq:suspects:default")


def test_strict_order_drains_queues_in_the_order_given(r, make_fetcher):
    for name in ("a", "b", "c"):
        push(r, name, *(f"{name}{n}" for n in range(5)))
    fetcher = make_fetcher([("c", 1), ("a", 1), ("b", 1)], strict=True, concurrency=1)
    got = []
    for _ in range(15):
        unit = take(fetcher)
        got.append(unit.payload)
        fetcher.done(unit, SUCCESS)
    assert got == [f"{name}{n}" for name in "cab" for n in range(5)]


# Quiet and close


def test_quiet_gives_buffered_jobs_back_to_the_front_in_order(r, make_fetcher):
    push(r, "default", "j0", "j1")
    push(r, "other", *(f"k{n}" for n in range(6)))
    fetcher = make_fetcher([("default", 1), ("other", 1)], strict=True, concurrency=2, prefetch=20)
    running = take(fetcher)
    assert running == Unit("default", "j0")
    # j1 and every k wait in the buffer, not started.
    wait_for(lambda: len(wip(r, "default")) + len(wip(r, "other")) == 8)

    fetcher.quiet()
    wait_for(lambda: r.llen("queue:default") == 1 and r.llen("queue:other") == 6)
    assert consume(r, "default") == ["j1"]
    assert consume(r, "other") == [f"k{n}" for n in range(6)]
    assert wip(r, "default") == ["j0"] and wip(r, "other") == []
    assert take(fetcher) is None

    fetcher.done(running, SUCCESS)
    fetcher.close()
    assert wip(r, "default") == []
    assert r.get("stat:processed") == "1"


def test_a_give_back_leaves_the_fetcher_one_connection(r, make_fetcher):
    """Round trips keep their connection (kiq.connection.send); the give-back goes through
    redis-py, which takes another from the pool: that one is closed after it."""
    push(r, "default", *(f"j{n}" for n in range(10)))
    fetcher = make_fetcher(concurrency=1, prefetch=5)
    running = take(fetcher)
    wait_for(lambda: len(wip(r)) == 6)
    fetcher.quiet()
    wait_for(lambda: r.llen("queue:default") == 9)
    names = [client["name"] for client in r.client_list()]
    assert names.count(f"kiq-fetch-{IDENT}") == 1, names
    fetcher.done(running, SUCCESS)


def test_quiet_releases_a_waiting_take(r, make_fetcher):
    fetcher = make_fetcher()
    pending = start_take(fetcher)
    wait_for(lambda: blocked_watchers(r) == 1)  # the take() is watching the queue
    fetcher.quiet()
    assert pending.get(timeout=2) is None


def test_job_arriving_after_quiet_stays_in_its_queue(r, make_fetcher):
    fetcher = make_fetcher()
    pending = start_take(fetcher)
    wait_for(lambda: blocked_watchers(r) == 1)
    fetcher.quiet()
    push(r, "default", "late")  # the watcher may still be blocked in BLMOVE and catch it
    fetcher.close()
    assert r.lrange("queue:default", 0, -1) == ["late"]
    assert wip(r) == []
    assert pending.get(timeout=2) is None
    assert take(fetcher) is None


def test_close_flushes_pending_acknowledgements(r, make_fetcher):
    push(r, "default", *(f"j{n}" for n in range(6)))
    fetcher = make_fetcher(concurrency=4)
    units = [take(fetcher) for _ in range(4)]
    for unit in units[:3]:
        fetcher.done(unit, SUCCESS)
    fetcher.done(units[3], Outcome(True, "retry", "retried-j3", 1_900_000_000.0))
    fetcher.close()  # no waiting: close itself must send what is pending
    assert r.get("stat:processed") == "4"
    assert r.get("stat:failed") == "1"
    assert r.zrange("retry", 0, -1) == ["retried-j3"]
    assert wip(r) == []
    assert consume(r, "default") == ["j4", "j5"]  # taken into the buffer, then given back


def test_worker_swept_while_alive_keeps_its_later_jobs_recoverable(redis_server, r, make_fetcher):
    fetcher = make_fetcher()
    pending = start_take(fetcher)
    wait_for(lambda: blocked_watchers(r) == 1)
    recovery = Recovery(connect(redis_server.url), Keys())
    # The worker's heartbeat lapsed (a pause, a partition): another master sweeps it.
    recovery.sweep()
    # It comes back, beats again (re-registering its lists, as a worker's heartbeat does) and takes a job ...
    Heartbeat(connect(redis_server.url), Keys(), IDENT, {}, dict, wip=[f"{IDENT}|default"]).beat(quiet=False)
    push(r, "default", "after-the-sweep")
    assert pending.get(timeout=5) == Unit("default", "after-the-sweep")
    # ... and then dies: its supervisor requeues everything it held. (This fetcher is still
    # alive and would take the job straight back, so count what moved instead of reading the queue.)
    assert r.sismember("kiq:wip", f"{IDENT}|default")
    assert recovery.requeue_all(IDENT) == 1


def test_an_acknowledgement_after_the_job_was_requeued_files_no_retry(redis_server, r, make_fetcher):
    """The job went back to its queue (a worker's final requeue at stop, or a sweep) before its
    acknowledgement arrived: filing it in retry as well would run it twice."""
    push(r, "default", "j0")
    fetcher = make_fetcher()
    unit = take(fetcher)
    Recovery(connect(redis_server.url), Keys()).requeue_all(IDENT, ["default"], crashed=False)
    fetcher.done(unit, Outcome(True, "retry", "retried-j0", 1_900_000_000.0))
    fetcher.done(unit, Outcome(True, "dead", "dead-j0", 1_900_000_000.0))
    fetcher.close()
    assert r.zcard("retry") == 0 and r.zcard("dead") == 0
    assert consume(r, "default") == ["j0"]
    assert r.get("stat:failed") == "2"  # it did run, and fail


# Liveness: a worker whose entry expired (kiq.lease)


def settle(fetcher: Fetcher) -> None:
    """Wait for the round trip that follows a first take (there is room in the buffer again)
    to find the queue empty: from then on the fetcher calls Redis only when the test makes it.
    A round trip between the test's deleting the entry and its sweep would reclaim the entry
    before the sweep (a clean-clone CI run under load did that)."""
    wait_for(lambda: fetcher._idle)


def take_all(takers: Takers, timeout: float = 1.5) -> list[str]:
    """Take and acknowledge jobs, as a worker's threads do, until none comes within ``timeout``."""
    taken = []
    while True:
        try:
            unit = takers.get(timeout=timeout)
        except queue.Empty:
            return taken
        taken.append(unit.payload)
        takers.done(unit, SUCCESS)


def test_a_swept_worker_starts_none_of_the_jobs_it_had_prefetched(redis_server, r, make_fetcher):
    push(r, "default", *(f"j{n}" for n in range(5)))
    fetcher = make_fetcher(concurrency=1, prefetch=20)
    running = take(fetcher)
    wait_for(lambda: len(wip(r)) == 5)  # one running, four prefetched
    settle(fetcher)
    # It is paused past its TTL: its entry expires, another master sweeps it, and by the time
    # it runs again its lease has run out. (Nothing takes from its buffer meanwhile.)
    r.delete(IDENT)
    Recovery(connect(redis_server.url), Keys()).sweep()
    fetcher.lease.end()
    fetcher.done(running, SUCCESS)
    # It starts none of the jobs it held: they are back on the queue, where it takes each once.
    # The one it was running then runs again (nothing can prevent that once it was requeued).
    assert sorted(take_all(Takers(fetcher))) == ["j0", "j1", "j2", "j3", "j4"]
    assert r.llen("queue:default") == 0 and wip(r) == []
    assert r.exists(IDENT) and not r.exists(f"kiq:swept:{IDENT}")
    assert r.get("stat:processed") == "6"


def test_a_worker_whose_entry_expired_unswept_keeps_its_jobs(r, make_fetcher):
    push(r, "default", *(f"j{n}" for n in range(5)))
    fetcher = make_fetcher(concurrency=1, prefetch=20)
    running = take(fetcher)
    wait_for(lambda: len(wip(r)) == 5)
    r.delete(IDENT)  # expired, but nobody swept it
    fetcher.lease.end()
    fetcher.done(running, SUCCESS)
    assert sorted(take_all(Takers(fetcher))) == ["j1", "j2", "j3", "j4"]
    assert r.sismember("processes", IDENT) and r.exists(IDENT)


def test_jobs_held_when_redis_lost_its_data_go_back_in_progress(r, make_fetcher):
    """No tombstone, and the jobs are gone from the in-progress list: Redis restarted without
    its data. The worker holds the only copies: they go back into its list, and run once."""
    push(r, "default", *(f"j{n}" for n in range(5)))
    fetcher = make_fetcher(concurrency=1, prefetch=20)
    running = take(fetcher)
    wait_for(lambda: len(wip(r)) == 5)
    r.flushall()
    fetcher.lease.end()
    fetcher.done(running, SUCCESS)
    wait_for(lambda: sorted(wip(r)) == ["j1", "j2", "j3", "j4"])
    assert sorted(take_all(Takers(fetcher))) == ["j1", "j2", "j3", "j4"]
    assert wip(r) == []


def test_a_worker_reclaims_its_entry_while_redis_refuses_writes(redis_server, r, make_fetcher):
    push(r, "default", *(f"j{n}" for n in range(3)))
    fetcher = make_fetcher(concurrency=1, prefetch=20)
    running = take(fetcher)
    wait_for(lambda: len(wip(r)) == 3)
    settle(fetcher)
    r.delete(IDENT)
    Recovery(connect(redis_server.url), Keys()).sweep()
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        fetcher.lease.end()
        fetcher.done(running, SUCCESS)
        wait_for(lambda: r.exists(IDENT) and not r.exists(f"kiq:swept:{IDENT}"))
    finally:
        r.config_set("maxmemory", 0)
    assert sorted(take_all(Takers(fetcher))) == ["j0", "j1", "j2"]


def test_tallies_ride_with_the_acknowledgements_and_outlast_a_failed_trip(redis_server, r, make_fetcher):
    """A worker tallies each job before acknowledging it (kiq.metrics); the round trip that takes
    the acknowledgement takes the tallies too, and one that fails keeps them for the next."""
    tallies, lock = Tallies(), threading.Lock()

    def taken() -> list:
        with lock:
            return tallies.take()

    push(r, "default", "j0", "j1")
    fetcher = make_fetcher(tallies=taken, retention=600)
    first, second = take(fetcher), take(fetcher)
    with lock:
        tallies.add("HardJob", 0.05, failed=False)
    fetcher.done(first, SUCCESS)
    wait_for(lambda: r.get("stat:processed") == "1")
    [minute] = r.keys("j|*")
    assert r.hgetall(minute) == {"HardJob|p": "1", "HardJob|ms": "50"} and 590 < r.ttl(minute) <= 600
    r.acl_setuser("admin", enabled=True, passwords=["+pw"], commands=["+@all"], keys=["~*"], channels=["*"])
    admin = redis.Redis(port=redis_server.port, username="admin", password="pw", decode_responses=True)
    # The fetcher's round trips now fail (the user stays on: redis-py turns a user off unless told).
    admin.acl_setuser("default", enabled=True, nopass=True, commands=["-evalsha"])
    with lock:
        tallies.add("HardJob", 0.05, failed=True)
    fetcher.done(second, Outcome(True))
    time.sleep(0.3)  # a round trip or two refused
    assert admin.get("stat:processed") == "1"
    admin.acl_setuser("default", enabled=True, nopass=True, commands=["+evalsha"])
    wait_for(lambda: r.get("stat:processed") == "2", timeout=10)
    records = [r.hgetall(key) for key in r.keys("j|*")]  # one minute, or two if one ended meanwhile
    assert [sum(int(record.get(f"HardJob|{field}", 0)) for record in records) for field in ("p", "f", "ms")] \
        == [2, 1, 50]

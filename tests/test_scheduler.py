"""Unit tests for kiq.scheduler: moving due jobs from ``schedule`` and ``retry`` into their queues."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from conftest import wait_for

from kiq.connection import connect
from kiq.keys import Keys
from kiq.retry import DEAD_TIMEOUT
from kiq.scheduler import BATCH, Scheduler


def scheduler(url: str, namespace: str = "") -> Scheduler:
    return Scheduler(url, Keys(namespace), threading.Lock())


def job(n: int, queue: str = "default", **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"class": "SchedJob", "args": [n], "jid": f"{n:024x}", "queue": queue,
                               "retry": True, "created_at": 1_700_000_000.25}
    payload.update(fields)
    return payload


def add(r, zset: str, payload: dict[str, Any] | str, score: float) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    r.zadd(zset, {text: score})
    return text


def queued(r, queue: str = "default", prefix: str = "") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(r.lrange(f"{prefix}queue:{queue}", 0, -1))]


@pytest.fixture
def conn(redis_server):
    return connect(redis_server.url)


def test_due_scheduled_job_is_enqueued_with_enqueued_at_and_without_at(redis_server, r, conn):
    now = time.time()
    add(r, "schedule", job(1, at=now - 5), now - 5)
    before = time.time()
    assert scheduler(redis_server.url).enqueue_due(conn) == 1
    [payload] = queued(r)
    assert "at" not in payload
    assert before <= payload["enqueued_at"] <= time.time()
    assert {k: v for k, v in payload.items() if k != "enqueued_at"} == job(1)
    assert r.zcard("schedule") == 0
    assert r.smembers("queues") == {"default"}


def test_due_retry_is_enqueued_into_its_queue(redis_server, r, conn):
    now = time.time()
    failed = job(2, "mail", enqueued_at=now - 100, failed_at=now - 60, retry_count=0,
                 error_class="ValueError", error_message="boom")
    add(r, "retry", failed, now - 1)
    assert scheduler(redis_server.url).enqueue_due(conn) == 1
    [payload] = queued(r, "mail")
    assert payload["enqueued_at"] > now - 100
    assert {k: v for k, v in payload.items() if k != "enqueued_at"} == {
        k: v for k, v in failed.items() if k != "enqueued_at"}
    assert r.zcard("retry") == 0
    assert r.smembers("queues") == {"mail"}


def test_future_jobs_stay(redis_server, r, conn):
    now = time.time()
    add(r, "schedule", job(1), now - 1)
    future = add(r, "schedule", job(2), now + 3600)
    future_retry = add(r, "retry", job(3), now + 60)
    assert scheduler(redis_server.url).enqueue_due(conn, now) == 1
    assert [p["args"] for p in queued(r)] == [[1]]
    assert r.zrange("schedule", 0, -1) == [future]
    assert r.zrange("retry", 0, -1) == [future_retry]


def test_now_argument_decides_what_is_due(redis_server, r, conn):
    add(r, "schedule", job(1), 1000.0)
    add(r, "schedule", job(2), 2000.0)
    sched = scheduler(redis_server.url)
    assert sched.enqueue_due(conn, now=999.0) == 0
    assert sched.enqueue_due(conn, now=1000.0) == 1  # due exactly now counts
    assert sched.enqueue_due(conn, now=1500.0) == 0
    assert sched.enqueue_due(conn, now=3000.0) == 1
    assert [p["args"] for p in queued(r)] == [[1], [2]]


def test_jobs_are_enqueued_in_the_order_they_were_due(redis_server, r, conn):
    now = time.time()
    for n in (3, 1, 2):
        add(r, "schedule", job(n), now - 100 + n)
    scheduler(redis_server.url).enqueue_due(conn)
    assert [p["args"] for p in queued(r)] == [[1], [2], [3]]


def test_more_than_one_batch(redis_server, r, conn):
    now = time.time()
    count = BATCH * 3 + 17
    assert BATCH == 100
    with r.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.zadd("schedule", {json.dumps(job(n, queue=f"q{n % 3}")): now - count + n})
        for n in range(count, count + BATCH + 1):
            pipe.zadd("retry", {json.dumps(job(n)): now - 10})
        pipe.execute()
    assert scheduler(redis_server.url).enqueue_due(conn) == count + BATCH + 1
    assert r.zcard("schedule") == 0 and r.zcard("retry") == 0
    for q in range(3):
        assert [p["args"][0] for p in queued(r, f"q{q}")] == [n for n in range(count) if n % 3 == q]
    assert r.llen("queue:default") == BATCH + 1


def test_missing_queue_means_default(redis_server, r, conn):
    payload = job(1)
    del payload["queue"]
    add(r, "schedule", payload, 1.0)
    scheduler(redis_server.url).enqueue_due(conn)
    assert [p["args"] for p in queued(r)] == [[1]]


@pytest.mark.parametrize(
    ("text", "reason"),
    [("{not json", "not valid JSON"), ('["a", 1]', "not a JSON object"),
     ('{"class": "X", "args": "no", "jid": "j"}', "'args'"), ('{"args": [], "jid": "j"}', "'class'"),
     ('{"class": "X", "args": [], "jid": "j", "queue": {"a": 1}}', "'queue' is not a string"),
     ('{"class": "X", "args": [], "jid": "j", "queue": 5}', "'queue' is not a string")],
)
def test_unparseable_entry_goes_to_dead_wrapped(redis_server, r, conn, text, reason):
    now = time.time()
    add(r, "schedule", text, now - 10)
    add(r, "schedule", job(1), now - 5)
    assert scheduler(redis_server.url).enqueue_due(conn) == 1
    assert [p["args"] for p in queued(r)] == [[1]]
    assert r.zcard("schedule") == 0
    [(dead, score)] = r.zrange("dead", 0, -1, withscores=True)
    wrapped = json.loads(dead)
    assert wrapped["class"] == "kiq.InvalidPayload"
    assert wrapped["args"] == [text]
    assert reason in wrapped["error_message"]
    assert now - 1 <= score <= time.time() + 1


def test_unparseable_retry_entry_goes_to_dead_too(redis_server, r, conn):
    add(r, "retry", "garbage", 1.0)
    assert scheduler(redis_server.url).enqueue_due(conn) == 0
    [dead] = r.zrange("dead", 0, -1)
    assert json.loads(dead)["args"] == ["garbage"]
    assert r.zcard("retry") == 0


def test_an_unparseable_entry_filed_in_dead_trims_it_by_age_as_every_writer_does(redis_server, r, conn):
    ancient, recent = "ancient", "recent"
    r.zadd("dead", {ancient: time.time() - DEAD_TIMEOUT - 3600, recent: time.time() - DEAD_TIMEOUT + 3600})
    add(r, "retry", "garbage", 1.0)
    scheduler(redis_server.url).enqueue_due(conn)
    assert r.zrange("dead", 0, 0) == [recent] and r.zcard("dead") == 2


def test_payload_keeps_its_meaning(redis_server, r, conn):
    text = (
        '{"class":"Ruby::Job","args":[1,2.5,-0.0,12345678901234567890,1e-7,[],{},[[]],{"a":{"b":[{}]}},'
        'null,true,"\\u00e9\\ud83d\\ude00",""],"jid":"0123456789abcdef01234567","queue":"default",'
        '"retry":5,"created_at":1700000000.123456,"at":1700000001,"kwargs":{},"tags":[],'
        '"wrapped":"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper","big":1.7976931348623157e308}'
    )
    add(r, "schedule", text, 1.0)
    assert scheduler(redis_server.url).enqueue_due(conn) == 1
    [moved] = r.lrange("queue:default", 0, -1)
    expected = json.loads(text)
    del expected["at"]
    got = json.loads(moved)
    enqueued_at = got.pop("enqueued_at")
    assert isinstance(enqueued_at, float)
    assert got == expected
    assert list(got) == list(expected)  # key order kept
    args = got["args"]
    assert type(args[0]) is int and type(args[1]) is float and type(args[3]) is int
    assert args[5] == [] and args[6] == {} and got["kwargs"] == {} and got["tags"] == []


def test_namespace(redis_server, r, conn):
    add(r, "app:schedule", job(1), 1.0)
    add(r, "app:retry", job(2), 1.0)
    add(r, "app:schedule", "bad", 1.0)
    add(r, "schedule", job(3), 1.0)  # another app's schedule is not ours
    assert scheduler(redis_server.url, "app").enqueue_due(conn) == 2
    assert sorted(p["args"][0] for p in queued(r, prefix="app:")) == [1, 2]
    assert r.smembers("app:queues") == {"default"}
    assert r.zcard("app:dead") == 1
    assert r.zcard("schedule") == 1
    assert not r.exists("queue:default", "queues", "dead")


def test_two_schedulers_racing_move_every_job_exactly_once(redis_server, r):
    count = 2000
    now = time.time()
    with r.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.zadd("schedule" if n % 2 else "retry", {json.dumps(job(n, queue=f"q{n % 4}")): now - 1})
        pipe.execute()
    start = threading.Barrier(2)
    moved: list[int] = []

    def run() -> None:
        conn = connect(redis_server.url)
        sched = scheduler(redis_server.url)
        start.wait()
        moved.append(sched.enqueue_due(conn))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(moved) == 2
    assert sum(moved) == count
    jids = [p["jid"] for q in range(4) for p in queued(r, f"q{q}")]
    assert len(jids) == count
    assert len(set(jids)) == count
    assert r.zcard("schedule") == 0 and r.zcard("retry") == 0 and r.zcard("dead") == 0


def test_next_due_is_the_earliest_of_both_sets(redis_server, r, conn):
    sched = scheduler(redis_server.url)
    assert sched.next_due(conn) is None
    add(r, "schedule", job(1), 5000.5)
    assert sched.next_due(conn) == 5000.5
    add(r, "retry", job(2), 4000.25)
    assert sched.next_due(conn) == 4000.25
    add(r, "schedule", job(3), 3000.0)
    assert sched.next_due(conn) == 3000.0
    r.delete("schedule")
    assert sched.next_due(conn) == 4000.25


def test_the_thread_outlives_an_unexpected_error_in_a_round(redis_server, r, monkeypatch):
    """A round that raises something other than a Redis error (redis-py's cluster client has
    errors of its own, for one) is logged and tried again; the thread never dies quietly."""
    sched = scheduler(redis_server.url)
    real, failures = sched.next_due, []

    def next_due_failing_once(conn):
        if not failures:
            failures.append(1)
            raise RuntimeError("a surprise")
        return real(conn)

    monkeypatch.setattr(sched, "next_due", next_due_failing_once)
    sched.start()
    try:
        wait_for(lambda: failures)
        add(r, "schedule", job(1), time.time() - 1)
        r.publish("kiq:schedule-wakeup", str(time.time()))
        wait_for(lambda: [p["jid"] for p in queued(r)] == [job(1)["jid"]])
        assert sched.thread.is_alive()
    finally:
        sched.stop()


# Keys of another type, written by anything with access to Redis


def test_a_queue_key_of_another_type_keeps_its_jobs_due_and_moves_the_others(redis_server, r, conn):
    r.hset("queue:low", "x", "y")
    for n in range(BATCH + 5):  # more than a batch of them: the round must still end
        add(r, "schedule", job(n, "low"), 1.0 + n)
    add(r, "schedule", job(9999), 2000.0)
    sched = scheduler(redis_server.url)
    assert sched.enqueue_due(conn) == 1
    assert [p["args"] for p in queued(r)] == [[9999]]
    assert r.zcard("schedule") == BATCH + 5  # not lost: they wait for their queue's key
    r.delete("queue:low")
    assert sched.enqueue_due(conn) == BATCH + 5
    assert len(queued(r, "low")) == BATCH + 5


def test_due_jobs_left_waiting_do_not_make_the_next_due_now(redis_server, r, conn):
    """Jobs kept by a queue key of another type stay due: the next due time is the first job
    after them, else the scheduler's loop would find work at once, and again (a busy loop)."""
    r.set("queue:blocked", "a string")
    add(r, "schedule", job(1, "blocked"), 1.0)
    add(r, "schedule", job(2), time.time() + 600)
    sched = scheduler(redis_server.url)
    sched.enqueue_due(conn)
    assert sched.next_due(conn) == pytest.approx(time.time() + 600, abs=5)
    r.delete("queue:blocked")
    assert sched.enqueue_due(conn) == 1
    assert sched.next_due(conn) == pytest.approx(time.time() + 600, abs=5)


def test_a_running_scheduler_rests_while_due_jobs_wait_and_says_why(redis_server, r):
    r.set("queue:blocked", "a string")
    add(r, "schedule", job(1, "blocked"), 1.0)
    r.config_resetstat()
    sched = scheduler(redis_server.url)
    logged = []
    sched.log = sched.log.bind()  # a logger of its own, to read what it says
    sched.log.error = lambda event, **fields: logged.append(event)  # type: ignore[method-assign]
    sched.start()
    try:
        time.sleep(2)  # long enough for thousands of rounds of a busy loop
    finally:
        sched.stop()
    calls = r.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0)
    assert calls < 20, f"{calls} ZRANGEs in 2 s: the scheduler spins"
    assert logged == ["due jobs wait in this set: the key of their queue (or of dead) is not a list "
                      "(a sorted set); fix or delete it"]


def test_a_backlog_of_due_jobs_lets_the_fork_lock_go_between_batches(redis_server, r):
    """The master forks under the scheduler's lock: a round moving a backlog of due jobs takes
    it a batch at a time, so a HUP's fork waits for one batch, not for the whole backlog."""
    total = 200 * BATCH
    with r.pipeline(transaction=False) as pipe:
        for n in range(total):
            pipe.zadd("schedule", {json.dumps(job(n)): 1.0 + n})
        pipe.execute()
    sched = scheduler(redis_server.url)
    seen: list[int] = []
    sched.start()
    try:
        while not seen or seen[-1] < total:
            with sched.lock:  # as the master takes it to fork
                seen.append(r.llen("queue:default"))
            time.sleep(0.001)
    finally:
        sched.stop()
    assert any(0 < size < total for size in seen), "the lock was held for the whole backlog"


def test_a_refusal_that_is_no_key_of_another_type_is_an_outage_not_a_key_to_delete(redis_server, r, conn):
    """Redis refusing writes (too few replicas here; a Redis Cluster that is down says CLUSTERDOWN)
    was logged as 'this key is not a sorted set; fix or delete it'."""
    import redis as redis_py

    add(r, "schedule", job(1), 1.0)
    r.config_set("min-replicas-to-write", 1)
    sched = scheduler(redis_server.url)
    try:
        with pytest.raises(redis_py.ResponseError, match="NOREPLICAS"):
            sched.enqueue_due(conn)
        assert sched.unreadable == set()
    finally:
        r.config_set("min-replicas-to-write", 0)
    assert sched.enqueue_due(conn) == 1


def test_a_schedule_key_of_another_type_leaves_the_retries_moving(redis_server, r, conn):
    r.hset("schedule", "x", "y")
    add(r, "retry", job(1), 1.0)
    sched = scheduler(redis_server.url)
    assert sched.enqueue_due(conn) == 1
    assert sched.next_due(conn) is None and sched.unreadable == {"schedule"}
    assert [p["args"] for p in queued(r)] == [[1]]
    r.delete("schedule")
    sched.enqueue_due(conn)
    assert sched.unreadable == set()


def test_a_dead_key_of_another_type_keeps_an_unreadable_entry_where_it_is(redis_server, r, conn):
    r.set("dead", "x")
    add(r, "retry", "garbage", 1.0)
    assert scheduler(redis_server.url).enqueue_due(conn) == 0
    assert r.zrange("retry", 0, -1) == ["garbage"]


def test_a_backlog_in_one_set_does_not_hold_up_the_others_due_jobs(redis_server, r, conn):
    """A batch from each set in turn: with ten batches of scheduled jobs due, a due retry
    reaches its queue after the first batch, not after the whole backlog."""
    now = time.time()
    pipe = r.pipeline()
    for n in range(10 * BATCH):
        pipe.zadd("schedule", {json.dumps(job(n)): now - 10})
    pipe.execute()
    add(r, "retry", job(99_999, error_class="ValueError"), now - 5)
    assert scheduler(redis_server.url).enqueue_due(conn, now) == 10 * BATCH + 1
    pushed = [each["jid"] for each in queued(r)]  # oldest first
    assert pushed.index(job(99_999)["jid"]) == BATCH  # right after the first batch of the schedule

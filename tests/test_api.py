"""kiq.api against a real Redis, on data written the way kiq and Sidekiq write it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from conftest import wait_for

from kiq.api import (
    API,
    BATCH,
    FILTER_WINDOW,
    SCAN_WINDOW,
    Job,
    contains,
    entry,
    find,
    history,
    matching,
    queue_matching,
    queue_summaries,
    queue_window,
    search,
    sorted_matching,
    sorted_window,
)
from kiq.keys import day
from kiq.retry import DEAD_MAX_JOBS, DEAD_TIMEOUT

NOW = time.time()


def payload(jid: str, queue: str = "default", job_class: str = "RecordJob", **extra: Any) -> dict[str, Any]:
    """A job hash as Sidekiq 6.4 writes it."""
    job: dict[str, Any] = {"retry": True, "queue": queue, "class": job_class, "args": [jid], "jid": jid,
                           "created_at": NOW - 100, "enqueued_at": NOW - 100}
    job.update(extra)
    return job


def dump(job: dict[str, Any]) -> str:
    """Compact JSON without ASCII escapes, like Ruby's JSON.generate."""
    return json.dumps(job, separators=(",", ":"), ensure_ascii=False)


def jid(n: int) -> str:
    return f"{n:024x}"


def push(r: redis.Redis, queue: str, *jobs: dict[str, Any], prefix: str = "") -> None:
    """Enqueue as a Sidekiq client does: SADD queues, LPUSH (oldest pushed first)."""
    r.sadd(f"{prefix}queues", queue)
    for job in jobs:
        r.lpush(f"{prefix}queue:{queue}", dump(job))


def failed(n: int, queue: str = "default", retry_count: int = 2) -> dict[str, Any]:
    return payload(jid(n), queue, retry_count=retry_count, error_class="ValueError",
                   error_message=f"boom {n}", failed_at=NOW - 50, retried_at=NOW - 10)


@pytest.fixture
def api(redis_server) -> API:
    return API(redis_server.url)


@pytest.fixture
def raw_redis(redis_server) -> redis.Redis:
    """A client that reads and writes bytes as they are (for payloads that are not UTF-8)."""
    return redis.Redis.from_url(redis_server.url, socket_timeout=5)


# -- stats ---------------------------------------------------------------


def test_stats_on_an_empty_redis_are_zero(api):
    s = api.stats()
    assert (s.processed, s.failed, s.enqueued, s.scheduled, s.retries, s.dead, s.processes, s.busy,
            s.processed_today, s.failed_today) == (0,) * 10


def test_stats_read_sidekiq_counters_sets_queues_and_processes(api, r):
    today = day()
    r.set("stat:processed", 1234)
    r.set("stat:failed", 56)
    r.set(f"stat:processed:{today}", 78)
    r.set(f"stat:failed:{today}", 9)
    r.set("stat:processed:2001-01-01", 1000)  # another day is not today's
    push(r, "default", *(payload(jid(n)) for n in range(3)))
    push(r, "critical", *(payload(jid(n), "critical") for n in range(10, 15)))
    r.sadd("queues", "empty")
    r.lpush("queue:unlisted", dump(payload(jid(99))))  # not in `queues`: Sidekiq does not count it
    r.zadd("schedule", {dump(payload(jid(20), at=NOW + 60)): NOW + 60})
    r.zadd("retry", {dump(failed(n)): NOW + n for n in range(30, 32)})
    r.zadd("dead", {dump(failed(n)): NOW - n for n in range(40, 44)})
    for ident, busy in (("web-1:11:aa", "3"), ("web-2:12:bb", "0")):
        r.sadd("processes", ident)
        r.hset(ident, mapping={"info": json.dumps({"hostname": ident}), "busy": busy, "beat": NOW,
                               "quiet": "false", "rss": 1000})
    r.sadd("processes", "gone:13:cc")  # heartbeat hash expired

    s = api.stats()

    assert (s.processed, s.failed, s.processed_today, s.failed_today) == (1234, 56, 78, 9)
    assert s.enqueued == 8
    assert (s.scheduled, s.retries, s.dead) == (1, 2, 4)
    assert (s.processes, s.busy) == (2, 3)


def test_stats_follow_a_queue_as_it_changes(api, r):
    push(r, "default", payload(jid(1)), payload(jid(2)))
    assert api.stats().enqueued == 2
    r.rpop("queue:default")
    assert api.stats().enqueued == 1


# -- queues --------------------------------------------------------------


def test_queues_lists_known_queues_by_name(api, r):
    push(r, "low", payload(jid(1), "low"))
    push(r, "critical", payload(jid(2), "critical"))
    assert [q.name for q in api.queues()] == ["critical", "low"]
    assert [q.size() for q in api.queues()] == [1, 1]


def test_queue_size_and_latency_with_float_seconds(api, r):
    queue = api.queue("default")
    assert queue.size() == 0
    assert queue.latency() == 0.0
    now = time.time()
    push(r, "default", payload(jid(1), enqueued_at=now - 30), payload(jid(2), enqueued_at=now))
    assert queue.size() == 2
    assert 29.5 < queue.latency() < 35


def test_queue_latency_reads_sidekiq_8_integer_milliseconds(api, r):
    push(r, "default", payload(jid(1), enqueued_at=int((time.time() - 12) * 1000)))
    assert 11.5 < api.queue("default").latency() < 17


def test_queue_latency_without_enqueued_at_or_readable_job_is_zero(api, r):
    r.lpush("queue:default", "not json")
    assert api.queue("default").latency() == 0.0
    job = payload(jid(1))
    del job["enqueued_at"]
    r.delete("queue:default")
    push(r, "default", job)
    assert api.queue("default").latency() == 0.0


def test_queue_jobs_are_oldest_first_and_page(api, r):
    push(r, "default", *(payload(jid(n)) for n in range(10)))
    queue = api.queue("default")
    assert [job.jid for job in queue.jobs()] == [jid(n) for n in range(10)]
    assert [job.jid for job in queue.jobs(3, 4)] == [jid(n) for n in range(3, 7)]
    assert [job.jid for job in queue.jobs(8, 50)] == [jid(8), jid(9)]
    assert queue.jobs(10, 5) == []


def test_queue_iteration_covers_more_than_a_batch_in_order(api, r):
    count = 2 * BATCH + 37
    push(r, "default", *(payload(jid(n)) for n in range(count)))
    jobs = list(api.queue("default"))
    assert [job.jid for job in jobs] == [jid(n) for n in range(count)]
    assert jobs[0].job_class == "RecordJob" and jobs[0].args == [jid(0)] and jobs[0].queue == "default"


def test_queue_find_and_delete(api, r):
    push(r, "default", *(payload(jid(n)) for n in range(BATCH + 50)))
    queue = api.queue("default")
    found = queue.find(jid(BATCH + 20))  # in the second batch
    assert found is not None and found.args == [jid(BATCH + 20)]
    assert queue.find("f" * 24) is None

    assert queue.delete(jid(BATCH + 20)) is True
    assert queue.delete(jid(BATCH + 20)) is False
    assert queue.delete("f" * 24) is False
    assert queue.size() == BATCH + 49
    assert queue.find(jid(BATCH + 20)) is None
    assert [job.jid for job in queue][:3] == [jid(0), jid(1), jid(2)]


def test_queue_clear_removes_the_list_and_its_name(api, r):
    push(r, "default", *(payload(jid(n)) for n in range(5)))
    push(r, "low", payload(jid(9), "low"))
    r.rpush("kiq:suspects:default", dump(payload(jid(7))))  # waits to run alone: a job of the queue too
    assert api.queue("default").clear() == 6
    assert not r.exists("queue:default") and not r.exists("kiq:suspects:default")
    assert r.smembers("queues") == {"low"}
    assert [q.name for q in api.queues()] == ["low"]
    assert api.stats().enqueued == 1


# -- sorted sets: reading ------------------------------------------------


def test_sorted_set_jobs_are_ordered_by_score_with_their_scores(api, r):
    r.zadd("retry", {dump(failed(n)): NOW + 100 - n for n in range(5)})
    jobs = api.retries.jobs()
    assert [job.jid for job in jobs] == [jid(n) for n in reversed(range(5))]
    assert [job.score for job in jobs] == pytest.approx([NOW + 100 - n for n in reversed(range(5))])
    assert jobs[0].error == "ValueError: boom 4"
    assert jobs[0].summary()["retry_count"] == 2
    assert [job.jid for job in api.retries.jobs(1, 2)] == [jid(3), jid(2)]
    assert api.retries.size() == 5


def test_sorted_set_find_scans_for_the_jid(api, r):
    r.zadd("dead", {dump(failed(n)): NOW - n for n in range(3 * BATCH)})
    # Another job whose arguments mention the jid is not a match.
    r.zadd("dead", {dump(payload(jid(9999), args=[jid(150)])): NOW})
    found = api.dead.find(jid(150))
    assert found is not None and found.jid == jid(150)
    assert found.score == pytest.approx(NOW - 150)
    assert api.dead.find("f" * 24) is None


def test_iterating_a_sorted_set_covers_every_batch(api, r):
    r.zadd("schedule", {dump(payload(jid(n), at=NOW + n)): NOW + n for n in range(BATCH * 2 + 5)})
    assert [job.jid for job in api.scheduled] == [jid(n) for n in range(BATCH * 2 + 5)]


# -- sorted sets: changing -----------------------------------------------


def test_delete_removes_exactly_the_given_entries(api, r):
    r.zadd("retry", {dump(failed(n)): NOW + n for n in range(4)})
    doomed = [api.retries.find(jid(1)), api.retries.find(jid(3))]
    assert api.retries.delete(doomed) == 2  # type: ignore[arg-type]
    assert [job.jid for job in api.retries.jobs()] == [jid(0), jid(2)]
    assert api.retries.delete(doomed) == 0  # type: ignore[arg-type]
    assert api.retries.delete([]) == 0


def test_retry_from_the_retry_set_moves_the_job_to_its_queue(api, r):
    r.zadd("retry", {dump(failed(1, "critical", retry_count=5)): NOW + 500, dump(failed(2)): NOW + 600})
    job = api.retries.find(jid(1))
    assert job is not None
    before = time.time()
    assert api.retries.retry([job]) == 1

    assert api.retries.size() == 1 and api.retries.find(jid(1)) is None
    assert "critical" in r.smembers("queues")
    [raw] = r.lrange("queue:critical", 0, -1)
    moved = json.loads(raw)
    assert moved["retry_count"] == 4  # a retry by hand does not spend one of the job's tries
    assert before <= moved["enqueued_at"] <= time.time()
    assert "at" not in moved
    for key in ("class", "args", "jid", "queue", "error_class", "error_message", "failed_at", "created_at"):
        assert moved[key] == job.payload[key]


def test_retry_from_dead_or_schedule_takes_one_off_retry_count_as_sidekiq_and_drops_at(api, r):
    r.zadd("dead", {dump(failed(1, retry_count=25)): NOW - 5})
    # Sidekiq stores a scheduled job without `at` (the score says when); kiq 0.1 kept it.
    sidekiq = payload(jid(3), "low")
    del sidekiq["enqueued_at"]
    r.zadd("schedule", {dump(payload(jid(2), "low", at=NOW + 3600)): NOW + 3600, dump(sidekiq): NOW + 60})
    assert api.dead.retry(api.dead.jobs()) == 1
    assert api.scheduled.retry(api.scheduled.jobs()) == 2

    from_dead = json.loads(r.lindex("queue:default", 0))  # type: ignore[arg-type]
    assert from_dead["retry_count"] == 24 and from_dead["jid"] == jid(1)  # Sidekiq's SortedEntry#retry
    from_schedule = [json.loads(raw) for raw in r.lrange("queue:low", 0, -1)]
    assert sorted(job["jid"] for job in from_schedule) == [jid(2), jid(3)]
    for job in from_schedule:
        assert "at" not in job and "retry_count" not in job
        assert job["enqueued_at"] > NOW
    assert r.zcard("dead") == 0 and r.zcard("schedule") == 0
    assert r.smembers("queues") == {"default", "low"}


def test_an_active_job_entry_without_its_class_is_shown_by_the_wrapper(api, r):
    """Written by anything with access to Redis: a wrapper whose job data names no class (or
    not as a string) shows the wrapper, not "None"."""
    wrapper = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
    for data in ({"arguments": [1]}, {"job_class": 7, "arguments": [1]}, {"job_class": "HelloJob"}):
        job = Job.parse(dump(payload(jid(1), job_class=wrapper, args=[data])))
        shown = "HelloJob" if data.get("job_class") == "HelloJob" else wrapper
        assert job.display_class == shown, data
        assert job.display_args == data.get("arguments", [data])


def test_retrying_from_dead_clears_the_crash_count(api, r):
    """Else one more crash within the day would bury a poison pill again at once, and a job that
    crashed twice before it failed into dead would be buried at its first crash. A job left in
    dead, and one retried from the retry set, keep theirs."""
    pill, other, left = (payload(jid(n), error_class=cls, error_message="x", failed_at=NOW)
                         for n, cls in ((1, "kiq.PoisonPill"), (2, "ValueError"), (3, "kiq.PoisonPill")))
    r.zadd("dead", {dump(pill): NOW - 3, dump(other): NOW - 2, dump(left): NOW - 1})
    r.zadd("retry", {dump(failed(4)): NOW})
    for n in (1, 2, 3, 4):
        r.set(f"kiq:recoveries:{jid(n)}", 2)
    assert api.dead.retry([job for job in api.dead.jobs() if job.jid != jid(3)]) == 2
    assert api.retries.retry(api.retries.jobs()) == 1
    assert [r.get(f"kiq:recoveries:{jid(n)}") for n in (1, 2, 3, 4)] == [None, None, "2", "2"]
    assert r.llen("queue:default") == 3


def test_a_retry_from_dead_that_redis_refuses_moves_nothing(redis_server, r):
    """The crash counters are cleared in a call before the move: a Redis that refuses it (here
    an ACL without DEL) fails the retry before any job has left the dead set, so that the error
    the operator sees is true."""
    r.acl_setuser("nodel", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-del"])
    r.zadd("dead", {dump(payload(jid(1), error_class="kiq.PoisonPill", failed_at=NOW)): NOW})
    r.set(f"kiq:recoveries:{jid(1)}", 2)
    limited = API(f"redis://nodel:pw@127.0.0.1:{redis_server.port}/0")
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.dead.retry(limited.dead.jobs())
    assert r.zcard("dead") == 1 and r.llen("queue:default") == 0


def test_retry_of_an_entry_already_moved_pushes_nothing(api, r):
    """Two operators retrying the same job: it reaches its queue once."""
    r.zadd("retry", {dump(failed(1)): NOW})
    jobs = api.retries.jobs()
    assert api.retries.retry(jobs) == 1
    assert api.retries.retry(jobs) == 0
    assert r.llen("queue:default") == 1


def test_retry_leaves_unreadable_entries_in_place(api, r, raw_redis):
    raw_redis.zadd("retry", {b"not json at all": NOW, b"\xff\xfe binary": NOW + 1, b"[1, 2]": NOW + 2})
    r.zadd("retry", {dump(failed(1)): NOW + 3})
    jobs = api.retries.jobs()
    assert len(jobs) == 4
    assert api.retries.retry(jobs) == 1
    assert r.llen("queue:default") == 1
    assert raw_redis.zrange("retry", 0, -1) == [b"not json at all", b"\xff\xfe binary", b"[1, 2]"]
    # ...and can still be deleted byte for byte.
    assert api.retries.delete(api.retries.jobs()) == 3
    assert r.zcard("retry") == 0


def test_kill_moves_entries_to_dead_unchanged(api, r):
    entries = {dump(failed(n)): NOW + 100 + n for n in range(3)}
    r.zadd("retry", entries)
    before = time.time()
    assert api.retries.kill([api.retries.find(jid(0)), api.retries.find(jid(2))]) == 2  # type: ignore[list-item]
    assert [job.jid for job in api.retries.jobs()] == [jid(1)]
    dead = r.zrange("dead", 0, -1, withscores=True)
    assert {raw for raw, _ in dead} == {dump(failed(0)), dump(failed(2))}
    assert all(before <= score <= time.time() for _, score in dead)
    assert api.retries.kill(api.dead.jobs()) == 0  # not in the retry set (any more)
    assert api.dead.kill(api.dead.jobs()) == 0
    assert r.zcard("dead") == 2


def test_find_takes_a_jid_with_glob_characters_literally(api, r):
    odd = {**failed(0), "jid": "x[y]z"}  # unescaped, [y] would match "y" only, never the bracket
    r.zadd("retry", {dump(odd): NOW, dump(failed(1)): NOW})
    assert api.retries.find("x[y]z").jid == "x[y]z"  # type: ignore[union-attr]
    assert api.retries.find("x*") is None


def test_clearing_a_queue_whose_listing_cannot_be_removed_still_says_it_cleared(api, r):
    push(r, "default", payload(jid(1)), payload(jid(2)))
    r.delete("queues")
    r.set("queues", "x")
    assert api.queue("default").clear() == 2 and not r.exists("queue:default")


def test_kill_leaves_the_entries_while_the_dead_key_is_of_another_type(api, r):
    r.zadd("retry", {dump(failed(0)): NOW + 100})
    r.set("dead", "x")
    assert api.retries.kill(api.retries.jobs()) == 0
    assert [job.jid for job in api.retries.jobs()] == [jid(0)]  # not lost


def test_kill_drops_dead_jobs_older_than_the_dead_timeout(api, r):
    ancient, old = dump(failed(900)), dump(failed(901))
    r.zadd("dead", {ancient: time.time() - DEAD_TIMEOUT - 3600, old: time.time() - DEAD_TIMEOUT + 3600})
    r.zadd("retry", {dump(failed(1)): NOW})
    assert api.retries.kill(api.retries.jobs()) == 1
    assert r.zrange("dead", 0, -1) == [old, dump(failed(1))]


def test_kill_keeps_the_dead_set_to_its_maximum_size(api, r):
    r.zadd("dead", {dump(failed(n)): NOW - 100_000 + n for n in range(DEAD_MAX_JOBS)})
    r.zadd("retry", {dump(failed(n)): NOW for n in range(DEAD_MAX_JOBS, DEAD_MAX_JOBS + 3)})

    assert api.retries.kill(api.retries.jobs()) == 3

    assert r.zcard("dead") == DEAD_MAX_JOBS
    for n in range(3):  # the oldest made room for the newly dead
        assert r.zscore("dead", dump(failed(n))) is None
    assert r.zscore("dead", dump(failed(3))) is not None
    for n in range(DEAD_MAX_JOBS, DEAD_MAX_JOBS + 3):
        assert r.zscore("dead", dump(failed(n))) is not None


def test_retry_all_over_several_batches_with_progress(api, r):
    count = 2 * BATCH + 50
    r.zadd("retry", {dump(failed(n, "q1" if n % 2 else "q2")): NOW + n for n in range(count)})
    progress: list[int] = []
    assert api.retries.retry_all(progress.append) == count
    assert sum(progress) == count and len(progress) == 3
    assert r.zcard("retry") == 0
    assert r.llen("queue:q1") + r.llen("queue:q2") == count
    assert {json.loads(raw)["jid"] for raw in r.lrange("queue:q1", 0, -1)} == {
        jid(n) for n in range(count) if n % 2}
    assert all(json.loads(raw)["retry_count"] == 1 for raw in r.lrange("queue:q2", 0, -1))


def test_retry_all_steps_over_unreadable_entries(api, r, raw_redis):
    count = 2 * BATCH + 50
    r.zadd("dead", {dump(failed(n)): NOW - 10_000 + n for n in range(count)})
    # Unreadable entries first, in the middle of the second batch and last.
    bad = {b"garbage-0": NOW - 20_000, b"\xffgarbage-1": NOW - 10_000 + 150.5, b"garbage-2": NOW}
    raw_redis.zadd("dead", bad)
    progress: list[int] = []
    assert api.dead.retry_all(progress.append) == count
    assert sum(progress) == count + len(bad)
    assert r.llen("queue:default") == count
    assert raw_redis.zrange("dead", 0, -1) == list(bad)
    assert {json.loads(raw)["jid"] for raw in r.lrange("queue:default", 0, -1)} == {
        jid(n) for n in range(count)}


def test_retry_all_leaves_entries_that_arrive_while_it_runs(api, r):
    """A running kiq fails a retried job within milliseconds and files it in `dead` again:
    `retry_all` must act on the entries that were there when it began, not chase the new ones
    (with jobs that fail fast it retried the same jobs over and over)."""
    count = BATCH + 50
    r.zadd("dead", {dump(failed(n)): NOW - 10_000 + n for n in range(count)})
    died_again = {dump(failed(n, retry_count=3)): time.time() for n in range(BATCH)}

    def progress(done: int) -> None:
        if len(calls) == 0:  # the first batch's jobs ran and died again
            r.zadd("dead", died_again)
        calls.append(done)

    calls: list[int] = []
    assert api.dead.retry_all(progress) == count
    assert r.llen("queue:default") == count
    assert set(r.zrange("dead", 0, -1)) == set(died_again)


def test_delete_all_and_kill_all_over_several_batches(api, r):
    count = 3 * BATCH + 1
    r.zadd("schedule", {dump(payload(jid(n), at=NOW + n)): NOW + n for n in range(count)})
    r.zadd("retry", {dump(failed(n)): NOW + n for n in range(count, 2 * count)})
    progress: list[int] = []

    assert api.scheduled.delete_all(progress.append) == count
    assert r.zcard("schedule") == 0 and sum(progress) == count and len(progress) == 4

    progress.clear()
    assert api.retries.kill_all(progress.append) == count
    assert r.zcard("retry") == 0 and r.zcard("dead") == count and sum(progress) == count
    assert {job.jid for job in api.dead} == {jid(n) for n in range(count, 2 * count)}


def test_bulk_actions_on_an_empty_set_do_nothing(api):
    calls: list[int] = []
    assert api.retries.retry_all(calls.append) == 0
    assert api.dead.delete_all(calls.append) == 0
    assert api.scheduled.kill_all(calls.append) == 0
    assert calls == []


# -- processes and signals -----------------------------------------------


def beat(r: redis.Redis, ident: str, busy: int = 0, quiet: bool = False, prefix: str = "",
         running: dict[str, Any] | None = None) -> dict[str, Any]:
    """A heartbeat as Sidekiq 6.4 (and kiq) writes it."""
    info = {"hostname": ident.split(":")[0], "pid": int(ident.split(":")[1]), "started_at": NOW - 60,
            "tag": "app", "concurrency": 10, "queues": ["critical", "default"], "labels": [],
            "identity": ident}
    r.sadd(f"{prefix}processes", ident)
    r.hset(prefix + ident, mapping={"info": json.dumps(info), "busy": busy, "beat": NOW,
                                    "quiet": "true" if quiet else "false", "rss": 51234, "rtt_us": 120})
    r.expire(prefix + ident, 60)
    for suffix in (":work", ":workers"):
        if running:
            r.hset(prefix + ident + suffix, mapping={tid: json.dumps(w) for tid, w in running.items()})
    return info


def test_processes_lists_live_processes_with_their_heartbeat(api, r):
    work = {"queue": "default", "payload": dump(payload(jid(1))), "run_at": int(NOW)}
    info = beat(r, "web-1:101:0a0a0a0a0a0a", busy=1, running={"tid-1": work})
    beat(r, "web-2:202:0b0b0b0b0b0b", quiet=True)
    r.sadd("processes", "web-3:303:0c0c0c0c0c0c")  # its hash expired: not live

    first, second = api.processes()

    assert first.identity == "web-1:101:0a0a0a0a0a0a"
    assert first.info == info
    assert (first.busy, first.quiet, first.rss_kb) == (1, False, 51234)
    assert first.beat == pytest.approx(NOW)
    assert first.running == [work]
    assert second.identity == "web-2:202:0b0b0b0b0b0b"
    assert (second.busy, second.quiet, second.running) == (0, True, [])


def test_processes_read_running_jobs_from_sidekiq_6_workers_hash(api, r):
    """Sidekiq 6 writes its running jobs only to IDENTITY:workers."""
    beat(r, "web-1:101:0a0a0a0a0a0a", busy=1)
    work = {"queue": "default", "payload": payload(jid(1)), "run_at": int(NOW)}
    r.hset("web-1:101:0a0a0a0a0a0a:workers", "tid-1", json.dumps(work))
    [process] = api.processes()
    assert process.running == [work]


def test_a_process_whose_heartbeat_expires_disappears(api, r):
    beat(r, "web-1:101:0a0a0a0a0a0a")
    assert [p.identity for p in api.processes()] == ["web-1:101:0a0a0a0a0a0a"]
    r.pexpire("web-1:101:0a0a0a0a0a0a", 1)
    wait_for(lambda: not r.exists("web-1:101:0a0a0a0a0a0a"), timeout=2)
    assert api.processes() == []
    assert api.stats().processes == 0


def test_quiet_and_stop_push_signals_with_a_ttl(api, r):
    api.quiet("web-1:101:0a0a0a0a0a0a")
    api.stop("web-1:101:0a0a0a0a0a0a")
    api.stop("web-2:202:0b0b0b0b0b0b")
    # A worker RPOPs its list: TSTP was first and is read first.
    assert r.lrange("web-1:101:0a0a0a0a0a0a-signals", 0, -1) == ["TERM", "TSTP"]
    assert r.rpop("web-1:101:0a0a0a0a0a0a-signals") == "TSTP"
    assert r.lrange("web-2:202:0b0b0b0b0b0b-signals", 0, -1) == ["TERM"]
    for key in ("web-1:101:0a0a0a0a0a0a-signals", "web-2:202:0b0b0b0b0b0b-signals"):
        assert 55 <= r.ttl(key) <= 60


# -- namespace and environment --------------------------------------------


def test_a_namespace_prefixes_every_key(redis_server, r):
    api = API(redis_server.url, namespace="shop")
    # Data outside the namespace is not seen.
    push(r, "default", payload(jid(1)))
    r.set("stat:processed", 5)
    r.zadd("dead", {dump(failed(2)): NOW})
    beat(r, "web-9:909:0909090909aa")

    push(r, "default", payload(jid(10)), payload(jid(11)), prefix="shop:")
    r.set("shop:stat:processed", 7)
    r.set(f"shop:stat:failed:{day()}", 2)
    r.zadd("shop:retry", {dump(failed(12)): NOW})
    r.zadd("shop:schedule", {dump(payload(jid(13), at=NOW + 60)): NOW + 60})
    beat(r, "web-1:101:0a0a0a0a0a0a", busy=2, prefix="shop:")

    s = api.stats()
    assert (s.processed, s.failed_today, s.enqueued, s.retries, s.scheduled, s.dead) == (7, 2, 2, 1, 1, 0)
    assert (s.processes, s.busy) == (1, 2)
    assert [q.name for q in api.queues()] == ["default"]
    assert [job.jid for job in api.queue("default")] == [jid(10), jid(11)]
    assert [p.identity for p in api.processes()] == ["web-1:101:0a0a0a0a0a0a"]

    assert api.retries.retry_all() == 1
    assert r.llen("shop:queue:default") == 3 and r.llen("queue:default") == 1
    assert api.scheduled.kill_all() == 1
    assert r.zcard("shop:dead") == 1 and r.zcard("dead") == 1
    api.quiet("web-1:101:0a0a0a0a0a0a")
    assert r.lrange("shop:web-1:101:0a0a0a0a0a0a-signals", 0, -1) == ["TSTP"]
    assert api.queue("default").clear() == 3
    assert r.smembers("shop:queues") == set() and r.smembers("queues") == {"default"}


def test_api_finds_redis_and_namespace_in_the_environment(redis_server, r, monkeypatch):
    monkeypatch.setenv("KIQ_REDIS_URL", redis_server.url)
    monkeypatch.setenv("KIQ_NAMESPACE", "env")
    push(r, "default", payload(jid(1)), prefix="env:")
    assert API().stats().enqueued == 1
    assert API(namespace="").stats().enqueued == 0


def test_api_falls_back_to_redis_url(redis_server, r, monkeypatch):
    monkeypatch.delenv("KIQ_REDIS_URL", raising=False)
    monkeypatch.delenv("KIQ_NAMESPACE", raising=False)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    push(r, "default", payload(jid(1)))
    assert API().stats().enqueued == 1


def test_job_parse_tolerates_anything():
    assert Job.parse("not json").payload == {}
    assert Job.parse("[1]").jid == ""
    job = Job.parse(dump(payload(jid(1), queue="")), 3.0)
    assert (job.queue, job.score, job.enqueued_at) == ("default", 3.0, pytest.approx(NOW - 100))
    assert Job.parse(dump(payload(jid(1), enqueued_at=int(NOW * 1000)))).enqueued_at == pytest.approx(NOW)
    assert Job.parse(dump(payload(jid(1), enqueued_at=True))).enqueued_at is None


# -- windows, search and history (kiq.web, kiq find) -------------------------


def test_queue_summaries_give_size_and_latency_in_one_round_trip(api, r):
    now = time.time()
    push(r, "default", payload(jid(1), enqueued_at=now - 30), payload(jid(2)))
    push(r, "low", payload(jid(3), "low", enqueued_at=int((now - 12) * 1000)))
    r.sadd("queues", "empty")
    found = {q.name: q for q in queue_summaries(api)}
    assert list(found) == ["default", "empty", "low"]
    assert (found["default"].size, found["empty"].size, found["low"].size) == (2, 0, 1)
    assert 29.5 < found["default"].latency < 35 and 11.5 < found["low"].latency < 17
    assert found["empty"].latency == 0.0


def test_history_reads_sidekiqs_daily_counters_oldest_first(api, r):
    now = time.time()
    r.set(f"stat:processed:{day(now)}", 30)
    r.set(f"stat:failed:{day(now)}", 3)
    r.set(f"stat:processed:{day(now - 86400 * 2)}", 10)
    rows = history(api, 3, now)
    assert rows == [(day(now - 86400 * 2), 10, 0), (day(now - 86400), 0, 0), (day(now), 30, 3)]
    assert history(api, 0) == []


def test_windows_read_from_either_end(api, r):
    push(r, "default", *(payload(jid(n)) for n in range(10)))
    queue = api.queue("default")
    assert [job.jid for job in queue_window(queue, 2, 3)] == [jid(2), jid(3), jid(4)]
    assert [job.jid for job in queue_window(queue, 2, 3, newest_first=True)] == [jid(7), jid(6), jid(5)]
    r.zadd("retry", {dump(failed(n)): NOW + n for n in range(10)})
    assert [job.jid for job in sorted_window(api.retries, 0, 2)] == [jid(0), jid(1)]
    assert [job.jid for job in sorted_window(api.retries, 1, 2, newest_first=True)] == [jid(8), jid(7)]


def test_entry_finds_a_job_by_its_exact_score_and_jid(api, r):
    r.zadd("retry", {dump(failed(n)): NOW + n / 3 for n in range(5)})
    found = entry(api.retries, NOW + 2 / 3, jid(2))
    assert found is not None and found.jid == jid(2) and found.score == NOW + 2 / 3
    assert entry(api.retries, NOW + 2 / 3, jid(3)) is None
    assert entry(api.retries, NOW + 0.5, jid(2)) is None


def test_matching_pages_through_matches_in_order_ignoring_case(api, r):
    r.zadd("dead", {dump(payload(jid(n), error_message="Needle" if n % 7 == 0 else "hay")): NOW + n
                    for n in range(1200)})

    def window(start: int, count: int) -> list[Job]:
        return sorted_window(api.dead, start, count)

    first, more = matching(window, "needle", 0, 5)
    assert [job.jid for job in first] == [jid(n) for n in range(0, 35, 7)] and more
    last, more = matching(window, "NEEDLE", 170, 5)
    assert [job.jid for job in last] == [jid(1190), jid(1197)] and not more
    assert contains(Job.parse(dump(payload(jid(1), args=["café"])).replace("é", "\\u00e9")), "CAFÉ")


def test_a_filtered_page_far_down_holds_one_page_not_every_match_before_it(api, r):
    """A filter's page number comes from the request (any GET, any site's image tag): the
    matches it skips are counted, not parsed and kept."""
    import tracemalloc

    r.zadd("dead", {dump(payload(jid(n), args=["needle" + "x" * 1000])): NOW + n for n in range(20_000)})
    tracemalloc.start()
    try:
        page, more = sorted_matching(api.dead, "needle", 19_990, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [job.jid for job in page] == [jid(n) for n in range(19_990, 19_995)] and more
    assert peak < 10_000_000, peak  # 20,000 parsed jobs of 1 kB took about 68 MB


def test_redis_filters_a_set_or_a_queue_in_every_order_as_matching_does(api, r):
    """FILTER_WINDOW + 300 entries, every 7th with the text: the page past the first window, in
    each order, is what matching (Python comparing every entry) gives."""
    size = FILTER_WINDOW + 300
    r.zadd("dead", {dump(payload(jid(n), error_message="Needle" if n % 7 == 0 else "hay")): NOW + n
                    for n in range(size)})
    push(r, "default", *(payload(jid(n), args=["Needle" if n % 7 == 0 else "hay"]) for n in range(size)))
    queue = api.queue("default")
    for newest in (False, True):
        for skip in (0, 140, 180):
            for fast, slow in (
                (sorted_matching(api.dead, "nEEDLE", skip, 10, newest),
                 matching(lambda s, c, n=newest: sorted_window(api.dead, s, c, n), "needle", skip, 10)),
                (queue_matching(queue, "nEEDLE", skip, 10, newest),
                 matching(lambda s, c, n=newest: queue_window(queue, s, c, n), "needle", skip, 10)),
            ):
                assert [(job.raw, job.score) for job in fast[0]] == [(job.raw, job.score) for job in slow[0]]
                assert fast[1] == slow[1]
    assert [job.jid for job in sorted_matching(api.dead, "needle", 0, 3, True)[0]] == [
        jid(n) for n in range(size - 1, 0, -1) if n % 7 == 0][:3]
    r.zadd("dead", {dump(payload(jid(9999), args=["café"])).replace("é", "\\u00e9"): NOW})
    assert [job.jid for job in sorted_matching(api.dead, "CAFÉ", 0, 5)[0]] == [jid(9999)]


def test_find_tells_every_place_a_jid_is(api, r):
    push(r, "default", *(payload(jid(n)) for n in range(SCAN_WINDOW + 10)))
    push(r, "low", payload(jid(7), "low"))  # the same job pushed twice
    r.zadd("schedule", {dump(payload(jid(9001))): NOW + 60})
    r.zadd("retry", {dump(failed(9002)): NOW + 60})
    r.zadd("dead", {dump(failed(9003)): NOW})
    r.zadd("dead", {dump(payload(jid(9999), args=[jid(9003)])): NOW})  # names it, but is another job
    r.sadd("processes", "web-1:1:aa")
    r.hset("web-1:1:aa", mapping={"info": json.dumps({"hostname": "web-1"}), "busy": 1, "beat": NOW})
    work = {"queue": "default", "payload": dump(payload(jid(9004))), "run_at": int(NOW)}
    r.hset("web-1:1:aa:work", "tid", json.dumps(work))
    sidekiq6 = {"queue": "default", "payload": payload(jid(9005)), "run_at": int(NOW)}
    r.hset("web-1:1:aa:workers", "tid", json.dumps(sidekiq6))  # read only when :work is empty

    where = {n: [(f.place, f.name) for f in find(jid(n), api)] for n in (7, SCAN_WINDOW + 5, 9001, 9002, 9003,
                                                                         9004, 4242)}
    assert where == {7: [("queue", "default"), ("queue", "low")], SCAN_WINDOW + 5: [("queue", "default")],
                     9001: [("schedule", "schedule")], 9002: [("retry", "retry")], 9003: [("dead", "dead")],
                     9004: [("running", "web-1:1:aa")], 4242: []}
    [running] = find(jid(9004), api)
    assert running.since == int(NOW) and running.job.job_class == "RecordJob"
    r.delete("web-1:1:aa:work")
    assert [(f.place, f.job.jid) for f in find(jid(9005), api)] == [("running", jid(9005))]


def test_find_tells_a_job_taken_by_a_worker_before_its_heartbeat_lists_it(api, r):
    r.sadd("processes", "web-1:1:aa")
    r.hset("web-1:1:aa", mapping={"info": json.dumps({"hostname": "web-1"}), "busy": 1, "beat": NOW})
    work = {"queue": "default", "payload": dump(payload(jid(1))), "run_at": int(NOW)}
    r.hset("web-1:1:aa:work", "tid", json.dumps(work))
    r.sadd("kiq:wip", "web-1:1:aa|default", "web-2:2:bb|low", "junk")
    r.rpush("kiq:wip:web-1:1:aa|default", dump(payload(jid(1))), dump(payload(jid(2))))  # 1 runs, 2 waits
    r.rpush("kiq:wip:web-2:2:bb|low", dump(payload(jid(3), "low")))
    r.hset("kiq:wip:junk", "a", "b")  # a key of another type, written by something else

    where = {n: [(f.place, f.name) for f in find(jid(n), api)] for n in (1, 2, 3, 4)}
    assert where == {1: [("running", "web-1:1:aa")], 2: [("taken", "web-1:1:aa")],
                     3: [("taken", "web-2:2:bb")], 4: []}


def test_find_with_no_api_finds_redis_like_the_client(redis_server, r, monkeypatch):
    monkeypatch.setenv("KIQ_REDIS_URL", redis_server.url)
    monkeypatch.delenv("KIQ_NAMESPACE", raising=False)
    push(r, "default", payload(jid(1)))
    assert [f.place for f in find(jid(1))] == ["queue"]


def test_search_looks_in_every_place_up_to_a_limit(api, r):
    push(r, "default", *(payload(jid(n), args=["order-42"]) for n in range(5)))
    push(r, "low", *(payload(jid(n), "low", args=["order-42"]) for n in range(5, 8)))
    r.zadd("retry", {dump(payload(jid(n), args=["ORDER-42"])): NOW + n for n in range(10, 14)})
    r.zadd("dead", {dump(failed(20)): NOW})
    found = search(api, "order-42", limit=6)
    assert [f.job.jid for f in found["queue"]] == [jid(n) for n in range(6)]
    assert [f.name for f in found["queue"]] == ["default"] * 5 + ["low"]
    assert [f.job.jid for f in found["retry"]] == [jid(n) for n in range(10, 14)]
    assert found["dead"] == found["schedule"] == found["running"] == []

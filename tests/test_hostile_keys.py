"""Keys of another type where kiq expects a list, a set or a number, written by anything with
write access to Redis: a worker keeps taking and acknowledging the jobs it can, says what it
cannot do, and loses no job."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import wait_for

pytestmark = pytest.mark.slow


def events(kiq) -> list[dict]:
    return [json.loads(line) for line in kiq.log().splitlines() if line.startswith("{")]


def test_a_stat_counter_that_is_no_number_loses_its_count_not_the_acknowledgements(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    r.set("stat:processed", "abc")
    for n in range(20):
        sample_jobs.RecordJob.perform_later(f"j{n}")
    wait_for(lambda: r.llen("results") == 20)
    wait_for(lambda: not any(r.llen(key) for key in r.keys("kiq:wip:*")))  # every one acknowledged
    assert r.get("stat:processed") == "abc" and r.llen("results") == 20
    assert not [e for e in events(kiq) if e["event"] == "redis unavailable, retrying"]


def test_a_queue_key_of_another_type_leaves_the_other_queues_served(start_kiq, client, r):
    import sample_jobs

    r.hset("queue:default", "a", "b")
    kiq = start_kiq(processes=1, concurrency=2, queues=["default", "low"])
    kiq.wait_workers(1)
    for n in range(30):
        sample_jobs.RecordJob.set(queue="low").perform_later(f"j{n}")
    wait_for(lambda: r.llen("results") == 30)
    said = [e for e in events(kiq) if e["event"].startswith("cannot take jobs from this queue")]
    assert said and {e["queue"] for e in said} == {"default"} and "WRONGTYPE" in said[0]["error"]
    assert len(said) == 1  # once, not on every round trip
    assert r.hgetall("queue:default") == {"a": "b"}


def test_a_failed_job_its_retry_set_cannot_take_stays_in_progress_and_is_not_lost(start_kiq, client, r):
    import sample_jobs

    r.set("retry", "not a sorted set")
    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    job = sample_jobs.FailJob.perform_later("once")
    wait_for(lambda: any(e["event"].startswith("could not file a failed job") for e in events(kiq)))
    [said] = [e for e in events(kiq) if e["event"].startswith("could not file a failed job")]
    assert said["jid"] == job.jid and "not a sorted set" in said["error"]
    [held] = [raw for key in r.keys("kiq:wip:*") for raw in r.lrange(key, 0, -1)]
    assert json.loads(held)["jid"] == job.jid
    r.delete("retry")
    sample_jobs.RecordJob.perform_later("after")  # the worker goes on
    wait_for(lambda: r.lrange("results", 0, -1) == ["after"])
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(30) == 0
    [back] = r.lrange("queue:default", 0, -1)  # requeued at the stop, to run again
    assert json.loads(back)["jid"] == job.jid
    stop_lines = [e["event"] for e in events(kiq) if "requeued" in e["event"]]
    assert "requeued jobs left in progress" in stop_lines
    assert "timeout: requeued unfinished jobs" not in stop_lines

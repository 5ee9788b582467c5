"""Unit tests for kiq.worker pieces that need no fork: the final requeue at a stop, and how a
processor thread's jobs are counted (kiq's metrics member of the server chain)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_for
from prometheus_client import REGISTRY

import kiq
from kiq import metrics, middleware
from kiq.client import build_payload
from kiq.config import Config
from kiq.fetch import Fetcher
from kiq.keys import Keys
from kiq.ledger import Ledger
from kiq.roundtrip import QueueOrder, Unit
from kiq.worker import JobMetrics, Worker

IDENT = "host:1:abc"
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


def stopping_worker(url: str) -> Worker:
    config = Config(redis_url=url, concurrency=2)
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    worker = Worker(config, 1, IDENT, os.getppid(), write_fd, Ledger(3))
    worker.fetcher = Fetcher(url, Keys(), IDENT, QueueOrder(config.queues, True), config.concurrency)
    return worker


def test_the_final_requeue_at_a_stop_rides_out_a_redis_outage(redis_server, r):
    redis_server.stop()
    redis_server.start(*PERSISTENT)
    r.lpush(f"kiq:wip:{IDENT}|default", "unfinished")
    worker = stopping_worker(redis_server.url)
    redis_server.stop()
    threading.Timer(1.0, redis_server.start, PERSISTENT).start()
    assert worker._requeue_unfinished(time.monotonic() + 20) == 1
    assert redis_server.client().lrange("queue:default", 0, -1) == ["unfinished"]


def test_the_final_requeue_gives_up_at_its_deadline(redis_server):
    worker = stopping_worker(redis_server.url)
    redis_server.stop()
    started = time.monotonic()
    assert worker._requeue_unfinished(started + 1.0) == 0
    assert time.monotonic() - started < 10


class CountedJob(kiq.Job):
    def perform(self, fail: bool = False) -> None:
        if fail:
            raise ValueError("counted failure")


class CountedDeadJob(kiq.Job):
    def perform(self) -> None:
        raise ValueError("to the dead set")


class CountedTimeoutJob(kiq.Job):
    timeout = 0.2

    def perform(self, seconds: float) -> None:
        time.sleep(seconds)


class Slow(middleware.Middleware):
    """An app's middleware that takes its time."""

    def around_perform(self, job: kiq.Job, call: Callable[[], Any]) -> Any:
        time.sleep(0.05)
        return call()


@pytest.fixture
def counting(redis_server) -> Iterator[Worker]:
    """A worker whose server chain has kiq's metrics member, as ``Worker.run`` adds it."""
    worker = stopping_worker(redis_server.url)
    member = JobMetrics(worker._ending)
    middleware.add_builtin(member)
    metrics.flush()
    yield worker
    if member in middleware.builtins():
        middleware.remove(member)
    middleware.clear()


def handle(worker: Worker, job: str, *args: Any, **fields: Any) -> bool:
    payload = build_payload(job, list(args))
    payload.update(fields)
    return worker._handle_unit(threading.current_thread().name, Unit("default", json.dumps(payload)))


def count(name: str, job: str, queue: str = "default") -> float:
    metrics.flush()
    return REGISTRY.get_sample_value(f"kiq_jobs_{name}_total", {"queue": queue, "class": job}) or 0.0


def test_the_chains_metrics_member_counts_each_job_with_its_outcome(counting):
    def counts() -> dict[tuple[str, str], float]:
        return {(name, job): count(name, job) for name in ("processed", "failed", "retried", "dead")
                for job in ("CountedJob", "CountedDeadJob")}

    before = counts()
    handle(counting, "CountedJob")
    handle(counting, "CountedJob", True)
    handle(counting, "CountedDeadJob", retry=0)
    after = counts()
    assert {key: after[key] - before[key] for key in after} == {
        ("processed", "CountedJob"): 2, ("failed", "CountedJob"): 1, ("retried", "CountedJob"): 1,
        ("dead", "CountedJob"): 0, ("processed", "CountedDeadJob"): 1, ("failed", "CountedDeadJob"): 1,
        ("retried", "CountedDeadJob"): 0, ("dead", "CountedDeadJob"): 1}
    assert [outcome.action for _, outcome in counting.fetcher._acks] == ["", "retry", "dead"]


def test_without_the_metrics_member_jobs_are_not_counted_but_unrunnable_payloads_are(counting):
    """The member is the seam: taken out of the chain, nothing counts a job that ran. A payload
    that never became a job never reached the chain; its processor thread counts it."""
    [member] = [m for m in middleware.builtins() if isinstance(m, JobMetrics)]
    middleware.remove(member)
    processed, unknown = count("processed", "CountedJob"), count("processed", metrics.UNKNOWN_CLASS)
    handle(counting, "CountedJob")
    handle(counting, "Nowhere::RegisteredJob")
    counting._handle_unit(threading.current_thread().name, Unit("default", "not json"))
    assert count("processed", "CountedJob") == processed
    assert count("processed", metrics.UNKNOWN_CLASS) == unknown + 2
    assert [outcome.action for _, outcome in counting.fetcher._acks] == ["", "retry", "dead"]


def test_the_app_middlewares_time_counts_in_the_jobs_duration(counting):
    """As in Sidekiq, whose metrics middleware comes first in the server chain."""

    def seconds() -> float:
        metrics.flush()
        labels = {"queue": "default", "class": "CountedJob"}
        return REGISTRY.get_sample_value("kiq_job_duration_seconds_sum", labels) or 0.0

    middleware.add(Slow())
    before = seconds()
    handle(counting, "CountedJob")
    assert seconds() - before >= 0.05


def past_timeout(worker: Worker) -> bool:
    """Whether a job on ``worker`` has run past its class's timeout (it is still running)."""
    now = time.monotonic()
    return any((limit := r.job_class.timeout) and now - r.started > limit for r in worker.running.values())


def test_a_job_failed_by_its_timeout_is_counted_once_even_if_it_ends_later(counting):
    """The timeout watch fails and counts the job; its thread, abandoned, still runs it to the
    end, and the chain's member must not count it a second time."""
    processed, failed = count("processed", "CountedTimeoutJob"), count("failed", "CountedTimeoutJob")
    ended: list[bool] = []
    thread = threading.Thread(target=lambda: ended.append(handle(counting, "CountedTimeoutJob", 0.6)),
                              name="processor-9")
    thread.start()
    wait_for(lambda: past_timeout(counting))
    counting._watch_timeouts()
    thread.join(5)
    assert ended == [False]  # abandoned: its thread acknowledges nothing
    [(_, outcome)] = counting.fetcher._acks
    assert outcome.action == "retry" and "kiq.JobTimeout" in outcome.payload
    assert count("processed", "CountedTimeoutJob") == processed + 1
    assert count("failed", "CountedTimeoutJob") == failed + 1


def test_a_job_with_a_timeout_is_out_of_the_watchs_reach_once_counted(counting):
    """The watch looks at a job just after the chain's member counted it, before its thread
    acknowledged it: too late to fail it, so the job is counted and acknowledged once."""

    class LateWatch(middleware.Middleware):
        def around_perform(self, job: kiq.Job, call: Callable[[], Any]) -> Any:
            outcome = call()
            for state in counting.running.values():
                state.started -= 10  # long past its timeout, were it still running
            counting._watch_timeouts()
            return outcome

    [member] = [m for m in middleware.builtins() if isinstance(m, JobMetrics)]
    middleware.remove(member)
    late = LateWatch()
    middleware.add_builtin(late)  # outside the metrics member
    middleware.add_builtin(member)
    processed, failed = count("processed", "CountedTimeoutJob"), count("failed", "CountedTimeoutJob")
    try:
        assert handle(counting, "CountedTimeoutJob", 0.0)
    finally:
        middleware.remove(late)
    [(_, outcome)] = counting.fetcher._acks
    assert outcome.action == "" and not outcome.failed
    assert count("processed", "CountedTimeoutJob") == processed + 1
    assert count("failed", "CountedTimeoutJob") == failed


def test_each_job_is_tallied_for_its_class_before_it_is_acknowledged(counting, monkeypatch):
    """The fetcher sends tallies with the round trip that takes acknowledgements (kiq.fetch): a
    job's tally must be there when its acknowledgement is, or the last round trip at a stop
    could leave it behind. A payload that never became a job has no class to tally."""
    metrics.tallies()  # what other tests left
    kept: list = []
    seen: list[tuple[str, int, int]] = []

    def at_acknowledgement(real: Callable[..., None]) -> Callable[..., None]:
        def acknowledge(unit: Unit, outcome: Any, *seconds: float) -> None:
            kept.extend(metrics.tallies())
            name = json.loads(unit.payload).get("class") if unit.payload.startswith("{") else None
            mine = [t for t in kept if t.job_class == name]
            seen.append((str(name), sum(t.processed for t in mine), sum(t.failed for t in mine)))
            real(unit, outcome, *seconds)
        return acknowledge

    monkeypatch.setattr(counting.fetcher, "done", at_acknowledgement(counting.fetcher.done))
    monkeypatch.setattr(counting.fetcher, "abandon", at_acknowledgement(counting.fetcher.abandon))
    handle(counting, "CountedJob")
    handle(counting, "CountedJob", True)
    handle(counting, "Nowhere::RegisteredJob")
    thread = threading.Thread(target=lambda: handle(counting, "CountedTimeoutJob", 0.6), name="processor-9")
    thread.start()
    wait_for(lambda: past_timeout(counting))
    counting._watch_timeouts()  # fails it: counted and acknowledged here
    thread.join(5)
    assert seen == [("CountedJob", 1, 0), ("CountedJob", 2, 1), ("Nowhere::RegisteredJob", 0, 0),
                    ("CountedTimeoutJob", 1, 1)]
    assert {t.job_class for t in kept} == {"CountedJob", "CountedTimeoutJob"}

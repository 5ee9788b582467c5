"""Every adapter with the same job module: Redis, async (in-process threads), inline and test."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import kiq
from kiq import adapters
from kiq.callbacks import discard_on, retry_on

done: list[tuple[str, object]] = []
lock = threading.Lock()


class AdapterJob(kiq.Job):
    queue = "adapted"

    def perform(self, name: str, when: dt.date, size: str = "m") -> None:
        with lock:
            done.append((name, (when, size, self.queue_name)))


class ExplodingJob(kiq.Job):
    retry = 0

    def perform(self) -> None:
        raise RuntimeError("kaboom")


class Flaky(Exception):
    pass


attempts: list[int] = []


@retry_on(Flaky, wait=0.05, attempts=3)
class RetriedInProcessJob(kiq.Job):
    def perform(self) -> None:
        attempts.append(self.executions)
        if len(attempts) < 3:
            raise Flaky("not yet")


class AsyncInlineJob(kiq.Job):
    async def perform(self, value: int) -> None:
        import asyncio

        await asyncio.sleep(0)
        done.append(("async", value))


class AsyncAnswerJob(kiq.Job):
    async def perform(self, value: int) -> int:
        import asyncio

        await asyncio.sleep(0)
        return value * 2


def test_an_async_job_runs_inline_from_code_on_a_running_event_loop():
    """perform_now, the inline adapter and the test helper called from an async test or view:
    asyncio.run refuses to start a loop there, so the job's own runs on a thread of its own."""
    import asyncio

    from kiq.testing import test_adapter

    async def view() -> int:
        adapters.use("inline")
        AsyncInlineJob.perform_later(5)
        with test_adapter() as jobs:
            AsyncInlineJob.perform_later(6)
            jobs.perform_enqueued_jobs()
        return int(AsyncAnswerJob.perform_now(21))

    assert asyncio.run(view()) == 42
    assert done == [("async", 5), ("async", 6)]


@discard_on(KeyError)
class DiscardedJob(kiq.Job):
    def perform(self) -> None:
        raise KeyError("gone")


@pytest.fixture(autouse=True)
def clean():
    done.clear()
    attempts.clear()
    yield
    adapters.use("redis")


def test_redis_adapter_is_the_default_and_writes_sidekiq_payloads(client, r, monkeypatch):
    monkeypatch.delenv("KIQ_ADAPTER", raising=False)
    adapters._current = None
    assert isinstance(adapters.current(), adapters.RedisAdapter)
    job = AdapterJob.perform_later("r", dt.date(2026, 1, 2), size="l")
    [raw] = r.lrange("queue:adapted", 0, -1)
    payload = json.loads(raw)
    assert payload["jid"] == job.jid and payload["kwargs"] == {"size": "l"}


def test_adapter_from_environment(monkeypatch):
    monkeypatch.setenv("KIQ_ADAPTER", "inline")
    adapters._current = None
    assert isinstance(adapters.current(), adapters.InlineAdapter)
    monkeypatch.setenv("KIQ_ADAPTER", "nonsense")
    adapters._current = None
    with pytest.raises(ValueError, match="unknown adapter 'nonsense'"):
        adapters.current()


def test_inline_runs_at_once_from_a_round_tripped_payload():
    adapters.use("inline")
    job = AdapterJob.set(queue="other").perform_later("i", dt.date(2026, 1, 2), size="s")
    assert done == [("i", (dt.date(2026, 1, 2), "s", "other"))]
    assert len(job.jid) == 24
    with pytest.raises(RuntimeError, match="kaboom"):
        ExplodingJob.perform_later()


def test_inline_refuses_unserializable_arguments_in_the_caller():
    adapters.use("inline")
    with pytest.raises(kiq.SerializationError):
        AdapterJob.perform_later("x", object())
    assert done == []


def test_async_runs_on_threads_and_honours_wait():
    adapter = adapters.use(adapters.AsyncAdapter(threads=2))
    assert isinstance(adapter, adapters.AsyncAdapter)
    started = time.time()
    AdapterJob.set(wait=0.3).perform_later("later", dt.date(2026, 1, 1))
    AdapterJob.perform_bulk([["a", dt.date(2026, 1, 1)], ["b", dt.date(2026, 1, 1)]])
    assert adapter.drain(5)
    assert sorted(name for name, _ in done) == ["a", "b"]
    deadline = time.time() + 5
    while len(done) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert [name for name, _ in done][-1] == "later"
    assert time.time() - started >= 0.3


def test_async_refuses_a_job_due_in_a_thousand_years_and_keeps_its_timer_past_a_far_one():
    """A wait beyond what a lock's wait takes (about 292 years here) ended the timer thread: no
    scheduled job or retry of the process ran after it. Such a time is refused now, as by set();
    a job due in 99 years waits without holding up the sooner ones."""
    adapter = adapters.use(adapters.AsyncAdapter(threads=2))
    with pytest.raises(ValueError, match="at most a century"):
        adapter.enqueue(AdapterJob, ["never", dt.date(2026, 1, 1)], at=time.time() + 1000 * 365 * 86400)
    adapter.enqueue(AdapterJob, ["later", dt.date(2026, 1, 1)], at=time.time() + 99 * 365 * 86400)
    time.sleep(0.1)  # the timer waits for it first
    AdapterJob.set(wait=0.2).perform_later("soon", dt.date(2026, 1, 1))
    deadline = time.time() + 5
    while not done and time.time() < deadline:
        time.sleep(0.01)
    assert [name for name, _ in done] == ["soon"]


def test_async_retries_in_process_and_keeps_the_dead():
    adapter = adapters.use(adapters.AsyncAdapter(threads=2))
    RetriedInProcessJob.perform_later()
    ExplodingJob.perform_later()
    deadline = time.time() + 5
    while (len(attempts) < 3 or not adapter.dead) and time.time() < deadline:
        time.sleep(0.01)
    assert attempts == [1, 2, 3]
    assert [d["class"] for d in adapter.dead] == ["ExplodingJob"]


def test_test_adapter_records_and_performs_on_request():
    adapter = adapters.use("test")
    assert isinstance(adapter, adapters.TestAdapter)
    AdapterJob.set(wait=60).perform_later("t", dt.date(2026, 1, 1))
    assert done == []
    [payload] = adapter.enqueued
    assert payload["class"] == "AdapterJob" and payload["queue"] == "adapted" and "at" in payload
    adapter.perform(payload)
    assert done == [("t", (dt.date(2026, 1, 1), "m", "adapted"))]
    assert adapter.performed == [payload]


def test_async_perform_runs_on_every_local_adapter():
    adapters.use("inline")
    AsyncInlineJob.perform_later(1)
    assert AsyncInlineJob.perform_now(2) is None
    adapter = adapters.use(adapters.AsyncAdapter())
    AsyncInlineJob.perform_later(3)
    assert adapter.drain(5)
    assert sorted(v for _, v in done) == [1, 2, 3]


def test_discard_on_drops_without_retry_anywhere():
    adapter = adapters.use(adapters.AsyncAdapter())
    DiscardedJob.perform_later()
    assert adapter.drain(5)
    assert adapter.dead == []


def test_adapters_are_reachable_after_a_plain_import_kiq():
    """docs/jobs.md's ``kiq.adapters.use("async")`` in a fresh interpreter that imported only kiq."""
    code = "\n".join([
        "import kiq",
        "adapter = kiq.adapters.use('async')",
        "print(type(adapter).__name__)",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == "AsyncAdapter"


def test_async_adapter_lines_name_their_job_in_an_app_that_set_up_no_logging():
    """docs/jobs.md: JobLog's fields reach the lines of jobs run by the async adapter, at kiq's
    default level, in an app process that never configured structlog (kiq start does it for a
    worker). Chosen through KIQ_ADAPTER, as the docs show, with its adapter found by current()."""
    code = "\n".join([
        "import kiq",
        "class PingJob(kiq.Job):",
        "    def perform(self, n): assert n == 1, 'not one'",
        "ok, bad = PingJob.perform_later(1), PingJob.perform_later(2)",
        "assert kiq.adapters.current().drain(10)",
        "print(ok.jid, bad.jid)",
    ])
    env = {**os.environ, "KIQ_ADAPTER": "async"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=True, env=env)
    ok, bad = result.stdout.split()
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    done_line = next(line for line in lines if line["event"] == "done")
    fail_line = next(line for line in lines if line["event"] == "fail")
    assert (done_line["jid"], done_line["class"], done_line["queue"]) == (ok, "PingJob", "default")
    assert (fail_line["jid"], fail_line["then"]) == (bad, "retry")
    assert "AssertionError: not one" in fail_line["exception"]
    assert not [line for line in lines if line["level"] == "debug"]


def test_the_async_adapter_says_at_exit_which_jobs_die_with_the_process():
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import kiq\n"
        "from kiq import adapters\n"
        "class Later(kiq.Job):\n"
        "    def perform(self): pass\n"
        "adapters.use('async')\n"
        "Later.set(wait=60).perform_later()\n"
        "Later.set(wait=90).perform_later()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    [line] = [json.loads(line) for line in done.stderr.splitlines() if "had not run yet" in line]
    assert line["jobs"] == 2 and line["level"] == "warning"

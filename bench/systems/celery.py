"""Celery with the Redis broker, at-least-once settings, and P worker instances of the threads pool.

``task_acks_late`` acknowledges after the task returns; with
``task_acks_on_failure_or_timeout`` off and ``task_reject_on_worker_lost`` on, a
task whose pool process dies is requeued. When the worker process itself dies
the message waits in kombu's unacked set for ``visibility_timeout`` (1 h).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench import jobs

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_acks_late=True,
    task_acks_on_failure_or_timeout=False,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    jobs.noop()


@app.task(name="bench.stamp")
def stamp(key: str, value: float) -> None:
    jobs.stamp(key, value)


@app.task(name="bench.nap")
def nap(seconds: float) -> None:
    jobs.nap(seconds)


@app.task(name="bench.slow")
def slow(token: str, seconds: float) -> None:
    jobs.slow(token, seconds)


def workers(processes: int, threads: int, redis_url: str, python: str) -> dict[str, Any]:
    commands = [
        [python, "-m", "celery", "-A", "bench.systems.celery", "worker", "-P", "threads",
         "-c", str(threads), "-n", f"bench{n}@%h", "--loglevel", "WARNING"]
        for n in range(processes)
    ]
    return {
        "commands": commands,
        "depth": 0,
        "shape": f"{processes} procs x {threads} threads",
        "bulk": False,
        "delay": True,
    }


def enqueue_noop(n: int, bulk: bool) -> None:
    if bulk:
        raise NotImplementedError("celery has no bulk enqueue")
    for _ in range(n):
        noop.delay()


def enqueue_stamp(key: str, value: float, delay: float) -> None:
    if delay:
        from datetime import datetime, timezone

        stamp.apply_async(args=(key, value), eta=datetime.fromtimestamp(value, timezone.utc))
    else:
        stamp.delay(key, value)


def enqueue_nap(seconds: float) -> None:
    nap.delay(seconds)


def enqueue_slow(token: str, seconds: float) -> None:
    slow.delay(token, seconds)

"""huey with RedisHuey: P ``huey_consumer`` processes, each with T worker threads.

A worker takes a task off the list with a blocking pop and nothing
acknowledges it: a task whose consumer dies is gone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huey import RedisHuey

from bench import jobs

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])


@huey.task(name="bench_noop")
def noop() -> None:
    jobs.noop()


@huey.task(name="bench_stamp")
def stamp(key: str, value: float) -> None:
    jobs.stamp(key, value)


@huey.task(name="bench_nap")
def nap(seconds: float) -> None:
    jobs.nap(seconds)


@huey.task(name="bench_slow")
def slow(token: str, seconds: float) -> None:
    jobs.slow(token, seconds)


def workers(processes: int, threads: int, redis_url: str, python: str) -> dict[str, Any]:
    consumer = str(Path(python).parent / "huey_consumer")
    command = [consumer, "bench.systems.huey.huey", "-k", "thread", "-w", str(threads), "-q"]
    return {
        "commands": [command] * processes,
        "depth": 0,
        "shape": f"{processes} procs x {threads} threads",
        "bulk": False,
        "delay": True,
    }


def enqueue_noop(n: int, bulk: bool) -> None:
    if bulk:
        raise NotImplementedError("huey has no bulk enqueue")
    for _ in range(n):
        noop()


def enqueue_stamp(key: str, value: float, delay: float) -> None:
    if delay:
        from datetime import datetime, timezone

        stamp.schedule(args=(key, value), eta=datetime.fromtimestamp(value, timezone.utc))
    else:
        stamp(key, value)


def enqueue_nap(seconds: float) -> None:
    nap(seconds)


def enqueue_slow(token: str, seconds: float) -> None:
    slow(token, seconds)

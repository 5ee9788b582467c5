"""RQ: ``rq worker-pool`` runs P workers; each forks a work horse per job (no threads).

A job whose horse dies is moved to the FailedJobRegistry by its worker (no retry
unless the job asked for one); jobs of a worker that dies entirely stay in the
StartedJobRegistry until a later registry clean-up marks them failed.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue

from bench import jobs

BATCH = 1000
_queue: Queue | None = None


def queue() -> Queue:
    global _queue
    if _queue is None:
        _queue = Queue("default", connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]))
    return _queue


def noop() -> None:
    jobs.noop()


def stamp(key: str, value: float) -> None:
    jobs.stamp(key, value)


def nap(seconds: float) -> None:
    jobs.nap(seconds)


def slow(token: str, seconds: float) -> None:
    jobs.slow(token, seconds)


def workers(processes: int, threads: int, redis_url: str, python: str) -> dict[str, Any]:
    rq = str(Path(python).parent / "rq")
    command = [rq, "worker-pool", "-n", str(processes), "-u", redis_url, "-l", "WARNING", "default"]
    return {
        "commands": [command],
        "depth": 1,
        "shape": f"{processes} procs x 1, fork/job",
        "slots": processes,
        "bulk": True,
        "delay": True,
    }


def enqueue_noop(n: int, bulk: bool) -> None:
    q = queue()
    if not bulk:
        for _ in range(n):
            q.enqueue(noop)
        return
    for start in range(0, n, BATCH):
        q.enqueue_many([Queue.prepare_data(noop) for _ in range(min(BATCH, n - start))])


def enqueue_stamp(key: str, value: float, delay: float) -> None:
    if delay:
        queue().enqueue_at(datetime.fromtimestamp(value, timezone.utc), stamp, key, value)
    else:
        queue().enqueue(stamp, key, value)


def enqueue_nap(seconds: float) -> None:
    queue().enqueue(nap, seconds)


def enqueue_slow(token: str, seconds: float) -> None:
    queue().enqueue(slow, token, seconds)

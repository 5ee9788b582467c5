"""Celery's default prefork pool, same app and settings as ``bench.systems.celery``:
one worker with P x T pool processes, one task at a time each.

Here ``task_reject_on_worker_lost`` applies: when a pool process dies, the
parent rejects the task with requeue, so it runs again.
"""

from __future__ import annotations

from typing import Any

from bench.systems.celery import enqueue_nap, enqueue_noop, enqueue_slow, enqueue_stamp

__all__ = ["enqueue_nap", "enqueue_noop", "enqueue_slow", "enqueue_stamp", "workers"]


def workers(processes: int, threads: int, redis_url: str, python: str) -> dict[str, Any]:
    pool = processes * threads
    command = [python, "-m", "celery", "-A", "bench.systems.celery", "worker", "-P", "prefork",
               "-c", str(pool), "-n", "bench@%h", "--loglevel", "WARNING"]
    return {
        "commands": [command],
        "depth": 1,
        "shape": f"{pool} prefork procs",
        "bulk": False,
        "delay": True,
    }

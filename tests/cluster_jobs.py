"""Jobs for the Redis Cluster tests (test_cluster.py): each records its run in a plain Redis
outside the cluster (``KIQ_RECORD_URL``), so that a failover of the cluster cannot lose the
record of a run."""

from __future__ import annotations

import os
import threading
import time

import redis

import kiq

_record: tuple[int, redis.Redis] | None = None
_lock = threading.Lock()


def record() -> redis.Redis:
    """One client per process, made after the fork."""
    global _record
    with _lock:
        if _record is None or _record[0] != os.getpid():
            _record = (os.getpid(), redis.Redis.from_url(os.environ["KIQ_RECORD_URL"], decode_responses=True))
        return _record[1]


class ClusterJob(kiq.Job):
    """Records its token and the queue it ran from, after ``pause`` seconds."""

    def perform(self, token: str, queue: str, pause: float = 0.0) -> None:
        time.sleep(pause)
        record().rpush("ran", f"{queue}:{token}")


class ClusterFailJob(kiq.Job):
    retry = 1

    def perform(self, token: str) -> None:
        record().rpush("attempts", token)
        raise ValueError(f"boom {token}")

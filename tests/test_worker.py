"""Unit tests for kiq.worker pieces that need no fork: the final requeue at a stop."""

from __future__ import annotations

import os
import threading
import time

from kiq.config import Config
from kiq.fetch import Fetcher
from kiq.keys import Keys
from kiq.ledger import Ledger
from kiq.roundtrip import QueueOrder
from kiq.worker import Worker

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

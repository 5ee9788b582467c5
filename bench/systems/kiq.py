"""kiq: ``kiq start`` forks P worker processes of T threads each; reliable batched fetch."""

from __future__ import annotations

import os
from typing import Any

import kiq
from bench import jobs

_client: kiq.Client | None = None


class BenchNoop(kiq.Job):
    def perform(self) -> None:
        jobs.noop()


class BenchStamp(kiq.Job):
    def perform(self, key: str, value: float) -> None:
        jobs.stamp(key, value)


class BenchNap(kiq.Job):
    def perform(self, seconds: float) -> None:
        jobs.nap(seconds)


class BenchSlow(kiq.Job):
    def perform(self, token: str, seconds: float) -> None:
        jobs.slow(token, seconds)


def workers(processes: int, threads: int, redis_url: str, python: str) -> dict[str, Any]:
    command = [
        python, "-m", "kiq", "start", "-r", "bench.systems.kiq", "-q", "default",
        "-p", str(processes), "--concurrency", str(threads), "--redis-url", redis_url,
        "-t", "5", "--log-level", "warning", "--log-format", "json",
    ]
    return {
        "commands": [command],
        "depth": "leaves",  # the master's workers, however many levels down
        "shape": f"{processes} procs x {threads} threads",
        "bulk": True,
        "delay": True,
    }


def _configure() -> None:
    """Point kiq's default client at the benchmark's Redis, once per process."""
    global _client
    if _client is None:
        _client = kiq.configure(os.environ["BENCH_REDIS_URL"])
        _client.redis.ping()


def enqueue_noop(n: int, bulk: bool) -> None:
    _configure()
    if bulk:
        BenchNoop.perform_bulk([[] for _ in range(n)])  # one round trip per 1,000
    else:
        for _ in range(n):
            BenchNoop.perform_later()


def enqueue_stamp(key: str, value: float, delay: float) -> None:
    _configure()
    if delay:
        BenchStamp.set(wait_until=value).perform_later(key, value)
    else:
        BenchStamp.perform_later(key, value)


def enqueue_nap(seconds: float) -> None:
    _configure()
    BenchNap.perform_later(seconds)


def enqueue_slow(token: str, seconds: float) -> None:
    _configure()
    BenchSlow.perform_later(token, seconds)

"""The job bodies every system runs, and the Redis keys they record into.

Each worker process makes its own Redis client on its first job, after the fork
(``BENCH_REDIS_URL``). Only ``redis`` and the standard library are imported here,
so this module loads both in kiq's virtualenv and in the peers' one.
"""

from __future__ import annotations

import os
import time

import redis

COUNTER = "bench:count"
SLOW_STARTS = "bench:slow"
WARM = "bench:warm"
LATENCY = "bench:latency"
MIXED = "bench:mixed"
SCHEDULED = "bench:scheduled"

_client: redis.Redis | None = None
_target: int | None = None


def _after_fork() -> None:
    """A forked worker makes its own client: a socket shared with the parent would mix replies."""
    global _client
    _client = None


os.register_at_fork(after_in_child=_after_fork)


def stamp_key(n: int) -> str:
    """Where the no-op job that brought the counter to ``n`` wrote its time (n = 1 and the target)."""
    return f"bench:t:{n}"


def conn() -> redis.Redis:
    """This process's client, made on first use (after the fork, for forked workers)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def target() -> int:
    """``BENCH_TARGET``, read once per process: the job body is one INCR, not an environment lookup."""
    global _target
    if _target is None:
        _target = int(os.environ.get("BENCH_TARGET") or 0)
    return _target


def noop() -> None:
    """One INCR; the first job and the one reaching ``BENCH_TARGET`` also record the time."""
    n = conn().incr(COUNTER)
    if n == 1 or n == target():
        conn().set(stamp_key(n), repr(time.time()))


def stamp(key: str, value: float) -> None:
    """Record how late this job started: now minus ``value`` (its enqueue or due time)."""
    late = time.time() - value
    conn().rpush(key, repr(late))


def nap(seconds: float) -> None:
    """Sleep, then count like ``noop``: the long jobs, and the slow 1% of the mixed scenario."""
    time.sleep(seconds)
    noop()


def slow(token: str, seconds: float) -> None:
    """Record which process started it and when, then sleep."""
    conn().rpush(SLOW_STARTS, f"{token} {os.getpid()} {time.time()!r}")
    time.sleep(seconds)

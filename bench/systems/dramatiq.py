"""Dramatiq with its Redis broker: ``dramatiq`` forks P worker processes of T threads each.

Messages are acknowledged after the actor returns; a dead consumer's unacked
messages go back to the queue when another consumer's maintenance finds its
heartbeat older than ``heartbeat_timeout`` (60 s by default).
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import jobs

dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_REDIS_URL"]))


@dramatiq.actor(actor_name="bench_noop")
def noop() -> None:
    jobs.noop()


@dramatiq.actor(actor_name="bench_stamp")
def stamp(key: str, value: float) -> None:
    jobs.stamp(key, value)


@dramatiq.actor(actor_name="bench_nap")
def nap(seconds: float) -> None:
    jobs.nap(seconds)


@dramatiq.actor(actor_name="bench_slow")
def slow(token: str, seconds: float) -> None:
    jobs.slow(token, seconds)


def workers(processes: int, threads: int, redis_url: str, python: str) -> dict[str, Any]:
    command = [python, "-m", "dramatiq", "bench.systems.dramatiq",
               "--processes", str(processes), "--threads", str(threads)]
    return {
        "commands": [command],
        "depth": 1,
        "shape": f"{processes} procs x {threads} threads",
        "bulk": False,
        "delay": True,
    }


def enqueue_noop(n: int, bulk: bool) -> None:
    if bulk:
        raise NotImplementedError("dramatiq has no bulk enqueue")
    for _ in range(n):
        noop.send()


def enqueue_stamp(key: str, value: float, delay: float) -> None:
    if delay:
        stamp.send_with_options(args=(key, value), delay=int(delay * 1000))
    else:
        stamp.send(key, value)


def enqueue_nap(seconds: float) -> None:
    nap.send(seconds)


def enqueue_slow(token: str, seconds: float) -> None:
    slow.send(token, seconds)

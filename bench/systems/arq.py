"""arq: P separate worker processes, each an asyncio loop running up to T jobs at once.

Jobs stay in the queue's sorted set until they finish; a worker marks a job
in progress with a key that expires after the job timeout plus 10 s (310 s by
default), so a job whose worker died runs again only after that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

import redis.asyncio
from arq import create_pool, run_worker
from arq.connections import ArqRedis, RedisSettings

from bench import jobs

_pool: ArqRedis | None = None
_loop: asyncio.AbstractEventLoop | None = None


async def startup(ctx: dict[str, Any]) -> None:
    """This process's own client for the job bodies, made after the process started."""
    ctx["bench"] = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])


async def noop(ctx: dict[str, Any]) -> None:
    conn = ctx["bench"]
    n = await conn.incr(jobs.COUNTER)
    if n == 1 or n == jobs.target():
        await conn.set(jobs.stamp_key(n), repr(time.time()))


async def nap(ctx: dict[str, Any], seconds: float) -> None:
    await asyncio.sleep(seconds)
    await noop(ctx)


async def stamp(ctx: dict[str, Any], key: str, value: float) -> None:
    late = time.time() - value
    await ctx["bench"].rpush(key, repr(late))


async def slow(ctx: dict[str, Any], token: str, seconds: float) -> None:
    await ctx["bench"].rpush(jobs.SLOW_STARTS, f"{token} {os.getpid()} {time.time()!r}")
    await asyncio.sleep(seconds)


class WorkerSettings:
    functions = [noop, stamp, nap, slow]  # noqa: RUF012 (arq reads class attributes)
    on_startup = startup


def serve(threads: int) -> None:
    """What ``arq bench.systems.arq.WorkerSettings`` does, with logging at WARNING like the others."""
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings, redis_settings=RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]),
               max_jobs=threads)


def workers(processes: int, threads: int, redis_url: str, python: str) -> dict[str, Any]:
    command = [python, "-m", "bench.driver", "arq", "serve", "--threads", str(threads)]
    return {
        "commands": [command] * processes,
        "depth": 0,
        "shape": f"{processes} procs x {threads} async",
        "bulk": False,
        "delay": True,
    }


def _run(coroutine: Any) -> Any:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


async def _redis() -> ArqRedis:
    global _pool
    if _pool is None:
        _pool = await create_pool(RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]))
    return _pool


def enqueue_noop(n: int, bulk: bool) -> None:
    if bulk:
        raise NotImplementedError("arq has no bulk enqueue")

    async def push() -> None:
        pool = await _redis()
        for _ in range(n):
            await pool.enqueue_job("noop")

    _run(push())


def enqueue_stamp(key: str, value: float, delay: float) -> None:
    async def push() -> None:
        pool = await _redis()
        if delay:
            await pool.enqueue_job("stamp", key, value,
                                   _defer_until=datetime.fromtimestamp(value, timezone.utc))
        else:
            await pool.enqueue_job("stamp", key, value)

    _run(push())


def enqueue_nap(seconds: float) -> None:
    async def push() -> None:
        await (await _redis()).enqueue_job("nap", seconds)

    _run(push())


def enqueue_slow(token: str, seconds: float) -> None:
    async def push() -> None:
        await (await _redis()).enqueue_job("slow", token, seconds)

    _run(push())

"""Redis data as Ruby Sidekiq 8 writes it, for the tests of kiq's reading of it.

Sidekiq 8 needs Ruby 3.2, which this machine does not have, so no live Sidekiq 8 writes these: each
builder follows what Sidekiq 8's public sources write (lib/sidekiq/client.rb, job_retry.rb,
api.rb, launcher.rb and its Active Job adapter), read for this, field by field:

- the client writes ``created_at`` and, when it pushes onto a queue, ``enqueued_at`` as integer
  epoch milliseconds (``Process.clock_gettime(CLOCK_REALTIME, :millisecond)``); a scheduled job
  goes to ``schedule`` without ``at`` and without ``enqueued_at``, its score float seconds;
- a failure adds ``error_message``, ``error_class``, ``retry_count`` and ``failed_at`` (the first
  one) or ``retried_at`` (the later ones), both integer milliseconds; the retry set's and the
  dead set's scores stay float epoch seconds;
- an Active Job is wrapped in ``Sidekiq::ActiveJob::Wrapper``, with ``wrapped`` and the job's data
  (Rails 7.1 and later) as the only argument;
- a process's ``info`` describes its queues in ``capsules`` (name: concurrency, mode, weights), and
  its running jobs in ``IDENTITY:work`` are ``{queue, payload: the job's JSON text, run_at: integer
  seconds}``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis

WRAPPER = "Sidekiq::ActiveJob::Wrapper"
VERSION = "8.0.4"


def millis(epoch: float) -> int:
    return int(epoch * 1000)


def dump(item: dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"))


def job(job_class: str, args: list[Any], created: float, queue: str = "default",
        retry: bool | int = True) -> dict[str, Any]:
    """A job hash as Sidekiq 8's client normalises it, before it is pushed."""
    return {"retry": retry, "queue": queue, "class": job_class, "args": args, "jid": os.urandom(12).hex(),
            "created_at": millis(created)}


def push(r: redis.Redis, item: dict[str, Any], enqueued: float) -> dict[str, Any]:
    """Onto its queue, with ``enqueued_at`` in milliseconds."""
    item = {**item, "enqueued_at": millis(enqueued)}
    r.sadd("queues", item["queue"])
    r.lpush(f"queue:{item['queue']}", dump(item))
    return item


def schedule(r: redis.Redis, item: dict[str, Any], at: float) -> dict[str, Any]:
    """Into ``schedule`` at ``at`` (the score, float seconds); the entry has no ``at``."""
    r.zadd("schedule", {dump(item): at})
    return item


def failed(item: dict[str, Any], at: float, error_class: str = "RuntimeError", message: str = "boom",
           retries: int = 0) -> dict[str, Any]:
    """``item`` after ``retries + 1`` failures, the last at ``at``, as job_retry.rb marks it."""
    marked = {**item, "error_message": message, "error_class": error_class, "retry_count": retries}
    marked["failed_at" if retries == 0 else "retried_at"] = millis(at)
    if retries:
        marked.setdefault("failed_at", millis(at - 60))
    return marked


def retry(r: redis.Redis, item: dict[str, Any], at: float) -> dict[str, Any]:
    r.zadd("retry", {dump(item): at})
    return item


def dead(r: redis.Redis, item: dict[str, Any], at: float) -> dict[str, Any]:
    r.zadd("dead", {dump(item): at})
    return item


def active_job(job_class: str, arguments: list[Any], created: float,
               queue: str = "default") -> dict[str, Any]:
    """A Rails job through Sidekiq 8's adapter: ``Sidekiq::ActiveJob::Wrapper`` around its data."""
    data = {"job_class": job_class, "job_id": "3a0a5c4e-8d7c-4a8e-9b5e-1f7d2c3b4a59", "provider_job_id": None,
            "queue_name": queue, "priority": None, "arguments": arguments, "executions": 0,
            "exception_executions": {}, "locale": "en", "timezone": "UTC",
            "enqueued_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(created)),
            "scheduled_at": None}
    return {"retry": True, "queue": queue, "wrapped": job_class, "args": [data], "class": WRAPPER,
            "jid": os.urandom(12).hex(), "created_at": millis(created)}


def process(r: redis.Redis, pid: int, queues: list[str], concurrency: int, started: float,
            running: list[dict[str, Any]] | None = None, since: float = 0.0, tag: str = "app") -> str:
    """A live Sidekiq 8 process in ``processes``, running ``running`` since ``since``; its identity."""
    identity = f"{socket.gethostname()}:{pid}:{os.urandom(6).hex()}"
    info = {"hostname": socket.gethostname(), "started_at": started, "pid": pid, "tag": tag,
            "concurrency": concurrency,
            "capsules": {"default": {"concurrency": concurrency, "mode": "strict",
                                     "weights": dict.fromkeys(queues, 0)}},
            "labels": [], "identity": identity, "version": VERSION, "embedded": False}
    r.sadd("processes", identity)
    running = running or []
    r.hset(identity, mapping={"info": dump(info), "busy": len(running), "beat": time.time(), "rtt_us": 120,
                              "quiet": "false", "rss": 81920})
    r.expire(identity, 60)
    for index, item in enumerate(running):
        work = {"queue": item["queue"], "payload": dump(item), "run_at": int(since)}
        r.hset(f"{identity}:work", f"t{index}", dump(work))
    return identity

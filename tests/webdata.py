"""For the dashboard's tests: data in Sidekiq's layout, written the way Sidekiq 6.4 and kiq write it,
and what a test reads back from a page or a server."""

from __future__ import annotations

import bisect
import json
import re
import socket
import threading
import time
from typing import Any

import redis

from kiq.execution import BOUNDS_MS

SCRIPT = "<script>alert('x')</script>"


def dump(job: dict[str, Any]) -> str:
    """Compact JSON without ASCII escapes, like Ruby's JSON.generate."""
    return json.dumps(job, separators=(",", ":"), ensure_ascii=False)


def jid(n: int) -> str:
    return f"{n:024x}"


def job(n: int, queue: str = "default", job_class: str = "RecordJob", **extra: Any) -> dict[str, Any]:
    now = time.time()
    payload: dict[str, Any] = {"retry": True, "queue": queue, "class": job_class, "args": [f"t{n}"],
                               "jid": jid(n), "created_at": now - 300, "enqueued_at": now - 300}
    payload.update(extra)
    return payload


def failure(n: int, queue: str = "default", **extra: Any) -> dict[str, Any]:
    fields = {"retry_count": 3, "error_class": "RuntimeError", "error_message": f"boom {n}",
              "failed_at": time.time() - 200, "retried_at": time.time() - 100}
    return job(n, queue, **{**fields, **extra})


def push(r: redis.Redis, queue: str, *jobs: dict[str, Any]) -> None:
    """Enqueue as a Sidekiq client does: SADD queues, LPUSH (oldest pushed first)."""
    r.sadd("queues", queue)
    for each in jobs:
        r.lpush(f"queue:{queue}", dump(each))


def add(r: redis.Redis, key: str, *scored: tuple[dict[str, Any], float]) -> None:
    """Entries of ``schedule``, ``retry`` or ``dead`` with their scores."""
    r.zadd(key, {dump(each): score for each, score in scored})


def heartbeat(r: redis.Redis, ident: str, busy: int = 0, quiet: bool = False, tag: str = "shop",
              running: dict[str, Any] | None = None) -> None:
    """A live process as a kiq or Sidekiq worker's heartbeat leaves it; ``running`` maps thread
    ids to running job hashes."""
    info = {"hostname": ident.split(":")[0], "pid": int(ident.split(":")[1]), "started_at": time.time() - 60,
            "tag": tag, "concurrency": 10, "queues": ["critical", "default"], "labels": [], "identity": ident}
    r.sadd("processes", ident)
    r.hset(ident, mapping={"info": json.dumps(info), "busy": busy, "beat": time.time(),
                           "quiet": "true" if quiet else "false", "rss": 40960})
    r.expire(ident, 60)
    for tid, payload in (running or {}).items():
        work = {"queue": payload["queue"], "payload": dump(payload), "run_at": int(time.time() - 7)}
        r.hset(f"{ident}:work", tid, json.dumps(work))


def fill(r: redis.Redis) -> None:
    """A little of everything, with a <script> in each place a job's text is shown."""
    now = time.time()
    push(r, "default", *(job(n) for n in range(3)), job(3, args=[SCRIPT]))
    push(r, "critical", job(10, "critical"))
    add(r, "schedule", (job(20, at=now + 600), now + 600), (job(21, args=[SCRIPT]), now + 700))
    add(r, "retry", (failure(30), now + 60), (failure(31, error_message=SCRIPT), now + 90))
    add(r, "dead", (failure(40), now - 60), (failure(41, args=[SCRIPT]), now - 30))
    heartbeat(r, "web-1:101:0a0a", busy=1, tag=SCRIPT, running={"tid-1": job(50, args=[SCRIPT])})
    r.set("stat:processed", 1234)
    r.set("stat:failed", 56)


def executions(r: redis.Redis, job_class: str, ago: int, runs_ms: list[float], failed: int = 0) -> None:
    """One class's execution metrics in the minute ``ago`` minutes back, written as Sidekiq 7's
    tracker writes them: HINCRBY of CLASS|p, CLASS|f and CLASS|ms in the minute's hash, one u16
    counter per histogram bucket with BITFIELD."""
    moment = time.gmtime(time.time() - 60 * ago)
    minute = f"j|{time.strftime('%Y%m%d|%-H:%-M', moment)}"
    r.hincrby(minute, f"{job_class}|p", len(runs_ms) + failed)
    if failed:
        r.hincrby(minute, f"{job_class}|f", failed)
    if runs_ms:
        r.hincrby(minute, f"{job_class}|ms", round(sum(runs_ms)))
        histogram = r.bitfield(f"{job_class}-{time.strftime('%d-%H:%-M', moment)}", default_overflow="SAT")
        for ms in runs_ms:
            histogram.incrby("u16", f"#{bisect.bisect_right(BOUNDS_MS, ms)}", 1)
        histogram.execute()


def csrf(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no form with a CSRF token on this page"
    return found.group(1)


def accepts(port: int) -> bool:
    """Whether a server listens on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def commands_during(redis_server, action) -> list[str]:
    """The commands Redis ran while ``action`` ran, as MONITOR shows them (quotes removed)."""
    seen: list[str] = []
    ready = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        with redis_server.client().monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                seen.append(command["command"])
                if stop.is_set() and command["command"] == "PING":
                    return

    thread = threading.Thread(target=watch)
    thread.start()
    assert ready.wait(5), "MONITOR did not start"  # active once its OK is read: nothing to wait for
    action()
    stop.set()
    redis_server.client().ping()
    thread.join(5)
    return seen


def plant_hostile_records(redis_url: str) -> None:
    """Records that anything with write access to Redis could leave where kiq and Sidekiq keep
    theirs: numbers that are none (or infinite), JSON that is none (or nested too deep, or not
    an object), a queue name that is not UTF-8. Readers must show the rest around them."""
    from kiq.keys import Keys, day, minute_names

    raw = redis.Redis.from_url(redis_url)
    deep = "[" * 5000 + "]" * 5000
    raw.sadd("processes", "bad:1:aa", "bad:2:bb")
    info = {"hostname": "bad", "concurrency": "x", "capsules": {"c": {"concurrency": "y"}}}
    raw.hset("bad:1:aa", mapping={"info": json.dumps(info), "busy": "x", "beat": "inf", "rss": "1e400"})
    raw.hset("bad:2:bb", mapping={"info": "[1]", "busy": "2", "beat": "x", "rss": "x"})
    raw.hset("bad:2:bb:work", mapping={"t1": "not json", "t2": "[1, 2]", "t3": deep})
    raw.sadd("queues", "default", b"bad\xff")
    raw.lpush("queue:default", deep, dump(job(1)))
    raw.zadd("retry", {deep: 1e300, dump(failure(2)): float("inf")})
    raw.zadd("dead", {dump(failure(3)): -1e300})
    raw.zadd("schedule", {dump(job(4)): float("-inf")})
    raw.set("stat:processed", "abc")
    raw.set(f"stat:processed:{day()}", "x")
    minute, _ = minute_names(int(time.time()) // 60)
    raw.hset(Keys().job_metrics(minute), mapping={"Count|p": "x", "Count|ms": "1e999"})


def plant_huge_numbers(redis_url: str) -> None:
    """Numbers too big for a clock, a float or ``str()`` (Python refuses an int of over 4,300
    digits), where kiq and Sidekiq keep times, counts and sizes: written by anything with
    access to Redis, each one alone must not fail a page."""
    from kiq.keys import Keys, day, minute_names

    raw = redis.Redis.from_url(redis_url)
    huge, longest = 10**400, "9" * 4300
    info = {"hostname": "huge", "pid": 1, "started_at": huge, "concurrency": huge, "queues": ["default"]}
    raw.sadd("processes", "huge:1:aa")
    raw.hset("huge:1:aa", mapping={"info": json.dumps(info), "busy": longest, "beat": str(huge),
                                   "rss": "9" * 4000})
    raw.hset("huge:1:aa:work", "t1", json.dumps({"queue": "default", "run_at": huge,
                                                 "payload": json.dumps(job(5, enqueued_at=huge))}))
    raw.sadd("queues", "default")
    raw.lpush("queue:default", dump(job(6, enqueued_at=huge, created_at=huge)))
    raw.zadd("retry", {dump(failure(7, retry_count=int(longest), failed_at=huge, retried_at=huge)): 0})
    raw.zadd("dead", {dump(failure(8, retry_count=int(longest))): 1})
    raw.zadd("schedule", {dump(job(9, at=huge)): 2})
    for date in (day(), day(time.time() - 86400)):  # their sum has 4,301 digits
        raw.set(f"stat:processed:{date}", longest)
        raw.set(f"stat:failed:{date}", longest)
    minute, _ = minute_names(int(time.time()) // 60)
    raw.hset(Keys().job_metrics(minute), mapping={"Foo|f": "1", "Bar|p": "2", "Bar|ms": "9" * 400})


def plant_keys_of_another_type(r: redis.Redis) -> None:
    """Keys where kiq and Sidekiq keep a list, a set or a hash, written with another type by
    anything with access to Redis, beside a queue that is fine."""
    push(r, "ok", job(1, "ok"))
    r.sadd("queues", "default")
    r.hset("queue:default", "a", "b")
    r.set("retry", "x")
    r.sadd("processes", "p:1:a")
    r.set("p:1:a", "x")

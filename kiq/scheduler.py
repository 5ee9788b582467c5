"""The master's scheduler thread: moves due jobs from ``schedule`` and ``retry`` into their queues.

Each move is atomic in a Lua script: the job is pushed only if this master's
ZREM removed it, so several masters racing never lose or double a job, and a
job is never only in a process's memory. The new payload (``enqueued_at`` set,
``at`` removed, as Sidekiq does) is written by Python's json module, which
keeps numbers and empty arrays exactly as they were.

The thread sleeps until the next job is due, at most ``MAX_SLEEP`` seconds, and
wakes early when a kiq client publishes a newly scheduled job.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from kiq import log
from kiq.connection import Outage, connect, wire, wrong_type
from kiq.keys import Keys
from kiq.lua import IS_A
from kiq.payload import InvalidPayloadError, decode, dump, stamp, wrap_invalid
from kiq.retry import TRIM_DEAD

# KEYS: the sorted set, dead, queues, then the lists of the queues the jobs go to (see
# ``move_call``). ARGV: now, how many queues, their names (in the order of their lists), then
# (old payload, which of those queues or 0 for the dead set, new payload) triples. Returns how
# many reached a queue and how many were left in the set: a job whose queue (or dead set) key
# anything else made another type stays where it is (Redis would not undo the ZREM if the push
# failed).
MOVE = TRIM_DEAD + IS_A + """
local now, queues, moved, left = ARGV[1], tonumber(ARGV[2]), 0, 0
local dead_ok = is_a(KEYS[2], 'zset')
local fits = {}
for target = 1, queues do fits[target] = is_a(KEYS[3 + target], 'list') end
for i = 3 + queues, #ARGV, 3 do
  local target = tonumber(ARGV[i + 1])
  local fit = (target == 0 and dead_ok) or (target > 0 and fits[target])
  if not fit then
    left = left + 1
  elseif redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    if target == 0 then
      redis.call('ZADD', KEYS[2], now, ARGV[i + 2])
      trim_dead(KEYS[2], now)
    else
      redis.pcall('SADD', KEYS[3], ARGV[2 + target])
      redis.call('LPUSH', KEYS[3 + target], ARGV[i + 2])
      moved = moved + 1
    end
  end
end
return {moved, left}
"""
BATCH = 100
MAX_SLEEP = 5.0
STOP_TIMEOUT = 0.5  # seconds for the stop's wake-up: a Redis that does not answer must not hold it up


class Scheduler:
    def __init__(self, redis_url: str, keys: Keys, lock: threading.Lock, shard: str = "") -> None:
        """``lock`` is held while touching Redis (a batch of moves at a time), so the master never
        forks mid-operation; a master runs one scheduler per ``shard`` (named in its thread and
        log lines, if any)."""
        self.redis_url = redis_url
        self.keys = keys
        self.lock = lock
        self.shard = shard
        self.stopped = threading.Event()
        self.unreadable: set[str] = set()  # sets whose key is of another type, said once
        self.waiting: dict[str, int] = {}  # per set, due jobs left there: their queue's key is another type
        self.log = log.get("kiq.scheduler")
        name = f"scheduler-{shard}" if shard else "scheduler"
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to end; each move is atomic, so not waiting long for it is safe."""
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):  # a wake-up: the thread also ends on its own
            connect(self.redis_url, timeout=STOP_TIMEOUT).publish(self.keys.schedule_channel, "stop")
        self.thread.join(1.0)

    def enqueue_due(self, conn: redis.Redis, now: float | None = None) -> int:
        """Move every job due by ``now`` from both sets, a batch from each in turn, so that a
        backlog in one (a million jobs scheduled for the same minute) does not hold up the
        other's (the retries); returns how many reached a queue. A set whose key is of another
        type is skipped (and said), the other one still served."""
        move = conn.register_script(MOVE)
        moved = 0
        waiting = dict.fromkeys((self.keys.schedule, self.keys.retry), 0)  # sets with due jobs left
        while waiting and not self.stopped.is_set():
            for zset in list(waiting):
                try:
                    reached, left, more = self._move_batch(conn, move, zset, now, waiting[zset])
                except redis.ResponseError as error:
                    if not wrong_type(error):
                        raise  # the cluster down, a read-only replica: an outage, not the key's fault
                    self._unreadable(zset, error)
                    del waiting[zset]
                    continue
                moved += reached
                waiting[zset] += left
                if not more:
                    self._done(zset, waiting.pop(zset))
            time.sleep(0)  # lets a fork waiting for the lock have it: a lock is not handed over in turn
        return moved

    def _move_batch(self, conn: redis.Redis, move: Any, zset: str, now: float | None,
                    waiting: int) -> tuple[int, int, bool]:
        """Move one batch of due jobs from ``zset``, skipping the ``waiting`` ones whose queue's
        key is of another type: (jobs that reached a queue, jobs left waiting, whether more may
        be due). A batch at a time under the lock: a backlog must not hold up a fork."""
        with self.lock:
            due = conn.zrangebyscore(zset, "-inf", time.time() if now is None else now, waiting, BATCH)
            if not due:
                return 0, 0, False
            jobs = [(raw, *self._requeued(raw)) for raw in map(str, due)]
            reached, left = move(**move_call(self.keys, zset, time.time(), jobs))
        return int(reached), int(left), len(due) == BATCH  # left: not those another master moved

    def _done(self, zset: str, waiting: int) -> None:
        """``zset`` has no more due jobs to move: say once that some wait on a key of another type."""
        self.unreadable.discard(zset)
        if waiting and not self.waiting.get(zset):
            self.log.error("due jobs wait in this set: the key of their queue (or of dead) is not a list "
                           "(a sorted set); fix or delete it", key=zset, jobs=waiting)
        self.waiting[zset] = waiting

    def next_due(self, conn: redis.Redis) -> float | None:
        """When the next job is due, past the due ones left waiting (else the loop would
        find them due at once, and again: a round a millisecond, with the fork lock held)."""
        due = []
        for zset in (self.keys.schedule, self.keys.retry):
            first = self.waiting.get(zset, 0)
            try:
                entry = conn.zrange(zset, first, first, withscores=True)
            except redis.ResponseError as error:
                if not wrong_type(error):
                    raise
                self._unreadable(zset, error)
                continue
            if entry:
                due.append(float(entry[0][1]))
        return min(due) if due else None

    def _unreadable(self, zset: str, error: redis.ResponseError) -> None:
        """Say once that ``zset`` cannot be read, until it can again."""
        if zset not in self.unreadable:
            self.log.error("cannot move due jobs: this key is not a sorted set; fix or delete it", key=zset,
                           error=str(error))
            self.unreadable.add(zset)

    def _requeued(self, raw: str) -> tuple[str, str]:
        """(queue, new payload) for a due job; an unreadable one goes to dead wrapped (queue "")."""
        try:
            payload = decode(raw)
        except InvalidPayloadError as error:
            return "", dump(wrap_invalid("", raw, str(error)))
        payload.pop("at", None)
        payload["enqueued_at"] = stamp(time.time())
        return str(payload.get("queue") or "default"), dump(payload)

    def _loop(self) -> None:
        conn = connect(self.redis_url, name="kiq-scheduler")
        outage = Outage(f"scheduler of shard {self.shard}" if self.shard else "scheduler")
        pause = 0.0
        pubsub = None
        while not self.stopped.is_set():
            try:
                if pubsub is None:
                    pubsub = conn.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.keys.schedule_channel)
                self.enqueue_due(conn)
                with self.lock:
                    due = self.next_due(conn)
                sleep = MAX_SLEEP if due is None else min(MAX_SLEEP, max(0.0, due - time.time()))
                pubsub.get_message(timeout=sleep)
                pause = outage.recovered()
            except Exception as error:  # the thread must outlive anything a round may raise
                if not isinstance(error, redis.RedisError):
                    self.log.exception("scheduler round failed unexpectedly; retrying")
                pause = outage.failed(error, pause)
                pubsub = None
                self.stopped.wait(pause)


def move_call(keys: Keys, zset: str, now: float, jobs: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """KEYS and ARGV of MOVE for ``(old payload, queue, new payload)`` triples taken from ``zset``;
    an empty queue sends the new payload to the dead set."""
    queues: dict[str, int] = {}
    args: list[str | bytes | float | int] = []
    for raw, queue, payload in jobs:
        if queue and queue not in queues:
            queues[queue] = len(queues) + 1
        args += [wire(raw), queues.get(queue, 0), payload]
    return {"keys": [zset, keys.dead, keys.queues, *map(keys.queue, queues)],
            "args": [now, len(queues), *queues, *args]}

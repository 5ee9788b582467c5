"""Moving a queue's jobs from one shard to another (``kiq shards move``), losing none.

Two Redis servers share no transaction, so each job is copied first and removed second: it
may be on both shards for a moment, never on neither. The copy goes where the job was: a
waiting job to the back of the queue on the target (oldest first, so the moved jobs keep
their order), an entry of ``schedule``, ``retry`` or ``dead`` into the same set with the
same score, a suspect (kiq.recovery) to the back of the queue's suspects list. The sets go
first and the lists last, so that a scheduled job the source's scheduler makes due meanwhile
is moved from the queue.

The removal is the exact entry (``LREM`` of the oldest copy, ``ZREM``). When it removes
nothing, something took the job on the source between copy and removal: a worker still
serving the queue there, the source's scheduler, an operator. The copy is then taken back
from the target, and the job lives on where it went on the source (a later move picks it up
from the source's queue). Only if the copy was taken on the target too (a worker, or the
target's scheduler, within that moment) does the job exist twice: it is counted as
``doubled`` and may run twice, kiq's usual at-least-once. A move stopped half way (a crash,
a Redis error) leaves each job on the source, on the target, or on both; running it again
moves what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.client import Pipeline

from kiq.api import API, Job, SortedSet
from kiq.connection import send, wire
from kiq.keys import Keys

BATCH = 100


@dataclass
class Moved:
    """What a move did: jobs moved per place, and those taken on the source meanwhile."""

    queue: str
    source: str
    target: str
    moved: dict[str, int] = field(
        default_factory=lambda: {"queue": 0, "suspects": 0, "schedule": 0, "retry": 0, "dead": 0})
    taken: int = 0  # taken on the source between copy and removal; the copy was withdrawn
    doubled: int = 0  # taken on both shards in that moment: on both, and may run twice

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def move_queue(source: API, target: API, queue: str, batch: int = BATCH) -> Moved:
    """Move every job of ``queue`` on ``source`` (waiting, scheduled, retrying, dead) to
    ``target``. Waiting jobs: at most as many as the queue held when the move began, so a
    producer still pushing there cannot keep it going; run it again for those."""
    moved = Moved(queue, source.shard, target.shard)
    for source_set, target_set in ((source.scheduled, target.scheduled), (source.retries, target.retries),
                                   (source.dead, target.dead)):
        moved.moved[source_set.name] = _move_entries(source_set, target_set, queue, batch, moved)
    for place, keys_of in (("queue", Keys.queue), ("suspects", Keys.suspects)):
        moved.moved[place] = _move_list(source, target, queue, keys_of, batch, moved)
    unlist = source.redis.register_script(UNLIST_EMPTY)
    unlist(keys=[source.keys.queue(queue), source.keys.suspects(queue), source.keys.queues], args=[queue])
    return moved


# KEYS: a queue, its suspects, queues. ARGV: its name. Once a move has emptied the queue and its
# suspects on the source, it leaves that shard's ``queues`` (a producer still pushing there lists
# it again with its push), so that ``kiq shards list``, ``kiq queues`` and the metrics stop
# showing it there.
UNLIST_EMPTY = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then redis.pcall('SREM', KEYS[3], ARGV[1]) end
return 0
"""


def _move_list(source: API, target: API, queue: str, keys_of: Callable[[Keys, str], str], batch: int,
               moved: Moved) -> int:
    """The jobs of one of ``queue``'s lists (``keys_of`` names it), oldest first."""
    key, target_key = keys_of(source.keys, queue), keys_of(target.keys, queue)
    left = int(source.redis.llen(key))
    done = 0
    while left > 0:
        raws = [str(raw) for raw in reversed(source.redis.lrange(key, -min(batch, left), -1))]  # oldest first
        if not raws:
            break
        left -= len(raws)
        # The listing in queues is best effort (kiq.connection.send): raising after the push
        # worked would leave the jobs on both shards, and a second move would copy them again.
        send(target.redis, [("SADD", target.keys.queues, queue), ("LPUSH", target_key, *map(wire, raws))],
             best_effort=(0,))
        pipe = source.redis.pipeline(transaction=False)
        for raw in raws:
            pipe.lrem(key, -1, wire(raw))  # type: ignore[arg-type]
        removed = pipe.execute()
        _withdraw(target, [raw for raw, gone in zip(raws, removed, strict=True) if not gone],
                  lambda pipe, raw: pipe.lrem(target_key, 1, wire(raw)), moved)  # type: ignore[arg-type]
        done += sum(1 for gone in removed if gone)
    return done


def _move_entries(source: SortedSet, target: SortedSet, queue: str, batch: int, moved: Moved) -> int:
    """The entries of ``source`` whose job is on ``queue``, found in one scan first (so a
    scan never meets an entry twice), then moved a batch at a time."""
    found: dict[str, float] = {}
    for raw, score in source.api.redis.zscan_iter(source.key, count=1000):
        if Job.parse(str(raw)).queue == queue:
            found[str(raw)] = float(score)
    entries = list(found.items())
    done = 0
    for start in range(0, len(entries), batch):
        chunk = dict(entries[start:start + batch])
        target.api.redis.zadd(target.key, {wire(raw): score for raw, score in chunk.items()})
        pipe = source.api.redis.pipeline(transaction=False)
        for raw in chunk:
            pipe.zrem(source.key, wire(raw))
        removed = pipe.execute()
        taken = [raw for raw, gone in zip(chunk, removed, strict=True) if not gone]
        _withdraw(target.api, taken, lambda pipe, raw: pipe.zrem(target.key, wire(raw)), moved)
        done += sum(1 for gone in removed if gone)
    return done


def _withdraw(target: API, taken: list[str], remove: Callable[[Pipeline, str], Any], moved: Moved) -> None:
    """Take back the copies of jobs taken on the source meanwhile; count those already taken
    on the target too (on both shards now)."""
    if not taken:
        return
    pipe = target.redis.pipeline(transaction=False)
    for raw in taken:
        remove(pipe, raw)
    withdrawn = pipe.execute()
    moved.taken += len(taken)
    moved.doubled += sum(1 for each in withdrawn if not each)

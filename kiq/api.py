"""Reading and managing kiq's data from any Python app: stats, queues, sets, processes, and the
execution metrics of each job class.

This is the operator's view (the CLI is built on it); the worker side never
imports it. It works on any data in Sidekiq's layout, whoever wrote it, and
changes it the way Sidekiq's API does: moves between a sorted set and a queue
or the dead set are atomic, and quiet/stop requests go through each process's
signals list, as Sidekiq's Web UI sends them.

``API`` reads one Redis: one shard (kiq.shards). ``ShardedAPI`` holds one ``API`` per shard
and reads them side by side, each process, queue and found job carrying its shard's name;
``move_queue`` drains a queue's jobs from one shard into another.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import operator
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from kiq import execution
from kiq.connection import connect, members, url_from_env, wire
from kiq.execution import ClassMetrics
from kiq.heartbeat import prefetched_by_queue
from kiq.keys import Keys, day, glob_escape, owner
from kiq.lua import IS_A
from kiq.payload import (
    check_format,
    dump,
    epoch_seconds,
    job_data,
    read_count,
    read_object,
    stamp,
    waited,
)
from kiq.retry import TRIM_DEAD, decode_backtrace
from kiq.scheduler import MOVE, move_call
from kiq.shards import SINGLE, Shard, Shards

if TYPE_CHECKING:
    from kiq.periodic import Entry

BATCH = 100
Progress = Callable[[int], None]

# KEYS: the sorted set, dead. ARGV: now, then payloads: each moves to the dead set.
KILL = TRIM_DEAD + IS_A + """
local now, killed = ARGV[1], 0
if not is_a(KEYS[2], 'zset') then return 0 end  -- the entries stay where they are
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], now, ARGV[i])
    killed = killed + 1
  end
end
trim_dead(KEYS[2], now)
return killed
"""


@dataclass(frozen=True)
class Job:
    """One job as stored: ``raw`` is the exact text in Redis; ``score`` is set for sorted-set entries."""

    raw: str
    payload: dict[str, Any]
    score: float | None = None

    @classmethod
    def parse(cls, raw: str, score: float | None = None) -> Job:
        return cls(raw, read_object(raw), score)

    @property
    def jid(self) -> str:
        return str(self.payload.get("jid", ""))

    @property
    def job_class(self) -> str:
        return str(self.payload.get("class", ""))

    @property
    def display_class(self) -> str:
        """The class a person knows the job by: an Active Job's own class, not Rails' wrapper
        (Sidekiq's ``display_class``)."""
        data = job_data(self.payload)
        name = data.get("job_class") if data is not None else None
        return name if isinstance(name, str) and name else self.job_class

    @property
    def display_args(self) -> list[Any]:
        """The arguments as the job's ``perform`` gets them: an Active Job's ``arguments``, not
        the wrapper's one hash (Sidekiq's ``display_args``)."""
        data = job_data(self.payload)
        arguments = data.get("arguments") if data is not None else None
        return arguments if isinstance(arguments, list) else self.args

    @property
    def queue(self) -> str:
        return str(self.payload.get("queue") or "default")

    @property
    def args(self) -> list[Any]:
        args = self.payload.get("args")
        return args if isinstance(args, list) else []

    @property
    def enqueued_at(self) -> float | None:
        return epoch_seconds(self.payload.get("enqueued_at"))

    def time(self, key: str) -> float | None:
        """A time field (``failed_at``, ``retried_at``...) as epoch seconds, whoever wrote it."""
        return epoch_seconds(self.payload.get(key))

    @property
    def error(self) -> str:
        if "error_class" not in self.payload:
            return ""
        return f"{self.payload['error_class']}: {self.payload.get('error_message', '')}"

    @property
    def backtrace(self) -> list[str]:
        """The frames of the last failure's ``error_backtrace``, innermost first (the job's
        ``backtrace`` option asks for one); empty when the job kept none."""
        return decode_backtrace(self.payload.get("error_backtrace"))

    def summary(self) -> dict[str, Any]:
        """What a listing shows of the job; its times in epoch seconds, whichever Sidekiq
        format wrote them."""
        found: dict[str, Any] = {"jid": self.jid, "class": self.job_class, "queue": self.queue,
                                 "args": self.args}
        if self.score is not None:
            found["at"] = self.score
        for key in ("kwargs", "retry_count", "error_class", "error_message"):
            if key in self.payload:
                found[key] = self.payload[key]
        for key in ("failed_at", "enqueued_at"):
            if key in self.payload:
                found[key] = self.time(key)
        return found


@dataclass(frozen=True)
class Stats:
    processed: int
    failed: int
    enqueued: int
    scheduled: int
    retries: int
    dead: int
    processes: int
    busy: int
    processed_today: int = 0
    failed_today: int = 0


@dataclass(frozen=True)
class Process:
    """A worker process from ``processes`` with its last heartbeat."""

    identity: str
    info: dict[str, Any]
    busy: int
    beat: float
    quiet: bool
    rss_kb: int
    running: list[dict[str, Any]] = field(default_factory=list)
    prefetched: dict[str, int] = field(default_factory=dict)  # per queue, held but not started
    shard: str = SINGLE  # the shard whose Redis it beats into (each worker serves one)

    @property
    def capsules(self) -> dict[str, dict[str, Any]]:
        """Sidekiq 8's ``capsules`` (name: concurrency, mode, weights); Sidekiq 6 and 7 write
        none, and neither does kiq below format 8."""
        capsules = self.info.get("capsules")
        return {str(name): each for name, each in capsules.items() if isinstance(each, dict)} \
            if isinstance(capsules, dict) else {}

    @property
    def queues(self) -> list[str]:
        """The queues it takes jobs from: ``queues`` as Sidekiq 6 and 7 write it, else the
        queues named in its capsules' weights."""
        queues = self.info.get("queues")
        if isinstance(queues, list):
            return [str(queue) for queue in queues]
        names: list[str] = []
        for capsule in self.capsules.values():
            weights = capsule.get("weights")
            if isinstance(weights, dict):
                names += [str(name) for name in weights if str(name) not in names]
        return names

    @property
    def concurrency(self) -> int:
        """Its threads: ``concurrency``, else its capsules' added up."""
        value = self.info.get("concurrency")
        if isinstance(value, int):
            return value
        return sum(read_count(each.get("concurrency")) for each in self.capsules.values())


class Queue:
    def __init__(self, api: API, name: str) -> None:
        self.api = api
        self.name = name
        self.key = api.keys.queue(name)

    def size(self) -> int:
        return int(self.api.redis.llen(self.key))

    def latency(self) -> float:
        """Seconds the oldest job not yet started has waited, in the queue or prefetched by a
        worker (Sidekiq's ``latency`` sees only the queue)."""
        oldest = self.api.redis.lindex(self.key, -1)
        _, held = self.api.prefetched().get(self.name, (0, None))
        return waited(str(oldest) if oldest is not None else None, held, time.time())

    def prefetched(self) -> int:
        """Jobs of this queue that workers hold but have not started, as of their last heartbeat."""
        return self.api.prefetched().get(self.name, (0, None))[0]

    def jobs(self, start: int = 0, count: int = 50) -> list[Job]:
        """Jobs in the order they will run (oldest first)."""
        end = -1 - start
        raws = self.api.redis.lrange(self.key, -(start + count), end)
        return [Job.parse(str(raw)) for raw in reversed(raws)]

    def __iter__(self) -> Iterator[Job]:
        return _pages(self.jobs)

    def find(self, jid: str) -> Job | None:
        return next((job for job in self if job.jid == jid), None)

    def delete(self, jid: str) -> bool:
        job = self.find(jid)
        return job is not None and int(self.api.redis.lrem(self.key, 1, wire(job.raw))) == 1  # type: ignore[arg-type]

    def clear(self) -> int:
        """Remove the queue and every job in it, its suspects (kiq.recovery) too; returns how
        many jobs. Its listing in ``queues`` goes too, best effort: a ``queues`` key of another
        type must not make a clear that happened look failed."""
        suspects = self.api.keys.suspects(self.name)
        pipe = self.api.redis.pipeline(transaction=True)
        pipe.llen(self.key)
        pipe.llen(suspects)
        pipe.delete(self.key, suspects)
        pipe.srem(self.api.keys.queues, self.name)
        count, held = pipe.execute(raise_on_error=False)[:2]
        if isinstance(count, redis.ResponseError):
            raise count
        return int(count) + read_count(held)


class SortedSet:
    """``schedule``, ``retry`` or ``dead``: jobs ordered by when (due, or died)."""

    def __init__(self, api: API, name: str, key: str) -> None:
        self.api = api
        self.name = name
        self.key = key

    def size(self) -> int:
        return int(self.api.redis.zcard(self.key))

    def jobs(self, start: int = 0, count: int = 50) -> list[Job]:
        entries: list[tuple[str, float]] = self.api.redis.zrange(self.key, start, start + count - 1,
                                                                 withscores=True)  # type: ignore[assignment]
        return [Job.parse(str(raw), float(score)) for raw, score in entries]

    def __iter__(self) -> Iterator[Job]:
        return _pages(self.jobs)

    def _until(self, score: float, start: int) -> list[Job]:
        entries: list[tuple[str, float]] = self.api.redis.zrangebyscore(  # type: ignore[assignment]
            self.key, "-inf", score, start, BATCH, withscores=True)
        return [Job.parse(str(raw), float(when)) for raw, when in entries]

    def find(self, jid: str) -> Job | None:
        """The entry with this jid (a scan, as in Sidekiq's ``find_job``)."""
        for raw, score in self.api.redis.zscan_iter(self.key, match=f"*{glob_escape(jid)}*", count=BATCH):
            job = Job.parse(str(raw), float(score))
            if job.jid == jid:
                return job
        return None

    def still_in(self, jobs: list[Job]) -> int:
        """How many of the entries ``jobs`` are still in the set (after an action left them
        there), in one round trip."""
        pipe = self.api.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.zscore(self.key, wire(job.raw))
        return sum(1 for score in pipe.execute() if score is not None) if jobs else 0

    def delete(self, jobs: list[Job]) -> int:
        if not jobs:
            return 0
        return int(self.api.redis.zrem(self.key, *(wire(job.raw) for job in jobs)))

    def retry(self, jobs: list[Job]) -> int:
        """Move entries to their queues now, ``retry_count`` one back, as Sidekiq's
        ``SortedEntry#retry`` does from any set: a manual retry does not spend one of the job's
        tries, and a dead job gets exactly one more. A dead job's crash count is cleared too:
        otherwise one or two more crashes would bury it as a poison pill at once (kiq.recovery).
        It is cleared before the move, in a call of its own (the counters may live in other
        slots of a Redis Cluster): a dead job whose count went is still a dead job."""
        if not jobs:
            return 0
        moves: list[tuple[str, str, str]] = []
        counted: list[str] = []
        for job in jobs:
            if not job.payload or not isinstance(job.payload.get("queue", ""), str):
                continue  # not a job hash kiq could run: it stays where it is, for a person to look at
            payload = dict(job.payload)
            payload.pop("at", None)
            payload["enqueued_at"] = stamp(time.time(), self.api.sidekiq_format)
            if type(payload.get("retry_count")) is int:
                payload["retry_count"] -= 1
            moves.append((job.raw, job.queue, dump(payload)))
            if self.name == "dead" and job.jid:
                counted.append(self.api.keys.recoveries(job.jid))
        if not moves:
            return 0
        if counted:  # before the move: a refusal here fails a retry that has not happened yet
            self.api.redis.delete(*counted)
        move = self.api.redis.register_script(MOVE)
        return int(move(**move_call(self.api.keys, self.key, time.time(), moves))[0])

    def kill(self, jobs: list[Job]) -> int:
        """Move entries to the dead set."""
        if not jobs or self.name == "dead":
            return 0
        now = time.time()
        args: list[str | bytes | float] = [now, *(wire(job.raw) for job in jobs)]
        return int(self.api.redis.register_script(KILL)(keys=[self.key, self.api.keys.dead], args=args))

    def retry_all(self, progress: Progress | None = None) -> int:
        return self._all(self.retry, progress)

    def delete_all(self, progress: Progress | None = None) -> int:
        return self._all(self.delete, progress)

    def kill_all(self, progress: Progress | None = None) -> int:
        return self._all(self.kill, progress)

    def _all(self, action: Callable[[list[Job]], int], progress: Progress | None) -> int:
        """Apply ``action`` to every entry there was when it began, a batch at a time, reporting
        progress per batch. Entries the action leaves in place (unreadable ones, for a retry)
        are stepped over; entries added meanwhile (a retried job that died again) are not
        touched, so a bulk retry cannot chase its own jobs."""
        last = self.api.redis.zrange(self.key, -1, -1, withscores=True)
        if not last:
            return 0
        until = float(last[0][1])
        done = start = 0
        while batch := self._until(until, start):
            moved = action(batch)
            done += moved
            start += len(batch) - moved
            if progress:
                progress(len(batch))
        return done


class API:
    """Entry point: ``kiq.api.API()`` finds Redis like the client does."""

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        connection: redis.Redis | None = None,
        sidekiq_format: int | None = None,
        shard: str = SINGLE,
    ) -> None:
        """``sidekiq_format`` (6, 7 or 8) is the job format of the times it writes (a retried
        entry's ``enqueued_at``); None means the process's (kiq.payload.writing_format). It
        reads every format. ``shard`` names the shard this Redis is, for what it lists."""
        self.shard = shard
        self.keys = Keys.using(namespace)
        self.sidekiq_format = None if sidekiq_format is None else check_format(sidekiq_format)
        self.redis = connection or connect(redis_url or url_from_env(), name="kiq-api", retry=True)
        self.scheduled = SortedSet(self, "schedule", self.keys.schedule)
        self.retries = SortedSet(self, "retry", self.keys.retry)
        self.dead = SortedSet(self, "dead", self.keys.dead)

    def queue(self, name: str) -> Queue:
        return Queue(self, name)

    def queues(self) -> list[Queue]:
        return [Queue(self, name) for name in sorted(self.members(self.keys.queues))]

    def members(self, key: str) -> list[str]:
        """A set's members; none when ``key`` is of another type: a reader shows the rest."""
        return members(self.redis, key) or []

    def stats(self) -> Stats:
        k = self.keys
        queues, identities = self.members(k.queues), self.members(k.processes)
        today = day()
        pipe = self.redis.pipeline(transaction=False)
        # as a command, not pipe.mget, which a cluster pipeline refuses (these share a slot)
        pipe.execute_command("MGET", k.processed, k.failed, k.processed_on(today),  # type: ignore[no-untyped-call]
                             k.failed_on(today))
        pipe.zcard(k.schedule)
        pipe.zcard(k.retry)
        pipe.zcard(k.dead)
        for queue in queues:
            pipe.llen(k.queue(queue))
        for ident in identities:
            pipe.hget(k.process(ident), "busy")
        # Each figure whose key is of another type counts 0; the others stand.
        counters, scheduled, retries, dead, *rest = pipe.execute(raise_on_error=False)
        processed, failed, processed_today, failed_today = map(read_count, counters)
        sizes, busy = rest[: len(queues)], [value for value in rest[len(queues):]
                                            if not isinstance(value, redis.ResponseError)]
        return Stats(processed, failed, sum(map(read_count, sizes)), read_count(scheduled),
                     read_count(retries), read_count(dead), sum(1 for value in busy if value is not None),
                     sum(map(read_count, busy)), processed_today, failed_today)

    def prefetched(self) -> dict[str, tuple[int, float | None]]:
        """Per queue, the jobs live processes hold but have not started, and the enqueue time of
        the oldest, as of each one's last heartbeat (kiq.heartbeat)."""
        pipe = self.redis.pipeline(transaction=False)
        for ident in self.members(self.keys.processes):
            pipe.hget(self.keys.process(ident), "prefetched")
        return prefetched_by_queue(pipe.execute(raise_on_error=False))

    def processes(self) -> list[Process]:
        """Live processes (entries whose heartbeat expired are skipped, as Sidekiq does).

        Running jobs come from ``IDENTITY:work`` (kiq, Sidekiq 7 and 8) or, when that is
        empty, ``IDENTITY:workers`` (Sidekiq 6 writes only that one)."""
        identities = sorted(self.members(self.keys.processes))
        pipe = self.redis.pipeline(transaction=False)
        for ident in identities:
            pipe.hmget(self.keys.process(ident), "info", "busy", "beat", "quiet", "rss", "prefetched")
            pipe.hgetall(self.keys.work(ident))
            pipe.hgetall(self.keys.workers(ident))
        replies = [{} if isinstance(reply, redis.ResponseError) else reply  # a key of another type
                   for reply in pipe.execute(raise_on_error=False)]
        found = []
        for index, ident in enumerate(identities):
            entry, work, workers = replies[3 * index: 3 * index + 3]
            if not entry or entry[0] is None:
                continue
            info, busy, beat, quiet, rss, held = entry
            work = work or workers
            running = [entry for entry in map(read_object, work.values()) if entry]
            prefetched = {queue: count for queue, (count, _) in prefetched_by_queue([held]).items()}
            found.append(Process(ident, read_object(info), read_count(busy), _seconds(beat), quiet == "true",
                                 read_count(rss), running, prefetched, self.shard))
        return found

    def job_metrics(self, minutes: int = 60, now: float | None = None) -> list[ClassMetrics]:
        """Each job class's count, failures, run time and run-time histogram over the last
        ``minutes`` minutes (up to ``now``), by class name, from the records that kiq's workers
        and Sidekiq 7's keep per minute (kiq.execution). ``percentile(0.95)`` of one is its p95
        run time in milliseconds, of the jobs that succeeded."""
        return execution.read_classes(self.redis, self.keys, minutes, now)

    def job_series(self, job_class: str, minutes: int = 60,
                   now: float | None = None) -> list[tuple[int, ClassMetrics]]:
        """One class's metrics in each of the last ``minutes`` minutes, oldest first: (minute,
        metrics), the minute as epoch seconds // 60, and zeros for a minute without jobs."""
        return execution.read_series(self.redis, self.keys, job_class, minutes, now)

    def quiet(self, identity: str) -> None:
        """Ask a process to stop taking jobs (Sidekiq's TSTP)."""
        self._signal(identity, "TSTP")

    def stop(self, identity: str) -> None:
        """Ask a process to finish its jobs and exit (Sidekiq's TERM)."""
        self._signal(identity, "TERM")

    def _signal(self, identity: str, name: str) -> None:
        key = self.keys.signals(identity)
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(key, name)
        pipe.expire(key, 60)
        pipe.execute()


def _pages(jobs: Callable[[int, int], list[Job]]) -> Iterator[Job]:
    start = 0
    while batch := jobs(start, BATCH):
        yield from batch
        start += BATCH



# -- windows, search and history, for the dashboard (kiq.web) and ``kiq find`` ----------------

SCAN_WINDOW = 500  # entries read per round trip while filtering or searching
TAKEN_WINDOW = 20_000  # entries read from each in-progress list: more than a worker holds
Window = Callable[[int, int], list[Job]]
PLACES = ("queue", "schedule", "retry", "dead", "running")


@dataclass(frozen=True)
class QueueSummary:
    name: str
    size: int
    latency: float  # seconds the oldest job not yet started has waited, in the queue or prefetched
    prefetched: int = 0  # jobs that workers hold but have not started
    shard: str = SINGLE
    suspects: int = 0  # jobs waiting to run alone (kiq.recovery), not counted in size


@dataclass(frozen=True)
class Found:
    """A job and where it is: ``place`` is one of PLACES, or ``taken`` or ``suspect`` (``find``
    only); ``name`` is the queue's name, or for a running or taken job the identity of the
    process that has it; ``since`` is when it started running."""

    place: str
    name: str
    job: Job
    since: float | None = None
    shard: str = SINGLE


def queue_summaries(api: API) -> list[QueueSummary]:
    """Every known queue with its size, latency, prefetched jobs and suspects, in one round trip
    after the queue names and one for the processes' prefetched jobs."""
    names = sorted(api.members(api.keys.queues))
    held = api.prefetched()
    pipe = api.redis.pipeline(transaction=False)
    for name in names:
        pipe.llen(api.keys.queue(name))
        pipe.lindex(api.keys.queue(name), -1)
        pipe.llen(api.keys.suspects(name))
    replies = pipe.execute(raise_on_error=False)
    now = time.time()
    found = []
    for index, name in enumerate(names):
        size, oldest, suspects = replies[3 * index: 3 * index + 3]
        if isinstance(size, redis.ResponseError):
            continue  # its key is of another type: left out, the other queues shown
        count, first = held.get(name, (0, None))
        found.append(QueueSummary(name, int(size), waited(oldest, first, now), count, api.shard,
                                  read_count(suspects)))
    return found


def history(api: API, days: int, now: float | None = None) -> list[tuple[str, int, int]]:
    """(date, processed, failed) for each of the last ``days`` UTC days, oldest first, from
    Sidekiq's daily counters."""
    moment = time.time() if now is None else now
    dates = [day(moment - 86400 * back) for back in reversed(range(days))]
    keys = [api.keys.daily(counter, date) for date in dates for counter in (api.keys.processed,
                                                                             api.keys.failed)]
    values = [read_count(value) for value in api.redis.mget(keys)] if keys else []
    return [(date, values[2 * i], values[2 * i + 1]) for i, date in enumerate(dates)]


def hourly(api: API, hours: int, now: float | None = None) -> list[tuple[str, int, int]]:
    """(``YYYY-MM-DD HH:00``, processed, failed) for each of the last ``hours`` UTC hours, the
    current one so far last, from the per-minute execution metrics of every class
    (kiq.execution): Sidekiq keeps daily counters only, and these records hold the hours."""
    moment = time.time() if now is None else now
    minute = int(moment) // 60
    totals = execution.read_totals(api.redis, api.keys, (hours - 1) * 60 + minute % 60 + 1, moment)
    rows: dict[int, list[int]] = {hour: [0, 0] for hour in range(minute // 60 - hours + 1, minute // 60 + 1)}
    for each, processed, failed in totals:
        rows[each // 60][0] += processed
        rows[each // 60][1] += failed
    return [(time.strftime("%Y-%m-%d %H:00", time.gmtime(hour * 3600)), processed, failed)
            for hour, (processed, failed) in rows.items()]


def redis_info(api: API) -> dict[str, Any]:
    """What the dashboard shows of the Redis server: version, memory, clients, uptime."""
    info: dict[str, Any] = api.redis.info()
    names = ("redis_version", "used_memory_human", "used_memory_peak_human", "connected_clients",
             "uptime_in_days", "maxmemory_policy")
    return {name: info.get(name, "") for name in names}


def queue_window(queue: Queue, start: int, count: int, newest_first: bool = False) -> list[Job]:
    """``count`` jobs of a queue from position ``start``, next to run (or newest) first."""
    if not newest_first:
        return queue.jobs(start, count)
    return [Job.parse(str(raw)) for raw in queue.api.redis.lrange(queue.key, start, start + count - 1)]


def sorted_window(entries: SortedSet, start: int, count: int, newest_first: bool = False) -> list[Job]:
    """``count`` entries from position ``start``, soonest (or with ``newest_first`` latest) first."""
    found: list[tuple[str, float]] = entries.api.redis.zrange(  # type: ignore[assignment]
        entries.key, start, start + count - 1, desc=newest_first, withscores=True)
    return [Job.parse(str(raw), float(score)) for raw, score in found]


def entry(entries: SortedSet, score: float, jid: str) -> Job | None:
    """The entry of ``jid`` at exactly ``score``: one lookup by score, however large the set."""
    found: list[tuple[str, float]] = entries.api.redis.zrangebyscore(  # type: ignore[assignment]
        entries.key, repr(score), repr(score), withscores=True)
    return next((job for job in (Job.parse(str(raw), float(when)) for raw, when in found)
                 if job.jid == jid), None)


def contains(job: Job, text: str) -> bool:
    """Whether ``text`` appears in the job as stored (class, jid, arguments, error), ignoring case;
    a text with non-ASCII letters is also looked for in the decoded payload, where JSON's
    ``\\u`` escapes are undone."""
    needle = text.lower()
    if needle in job.raw.lower():
        return True
    return not needle.isascii() and needle in json.dumps(job.payload, ensure_ascii=False).lower()


def matching(window: Window, text: str, skip: int, count: int) -> tuple[list[Job], bool]:
    """The ``count`` jobs containing ``text`` after the first ``skip`` such jobs, read a window at
    a time in the window's order (so memory stays bounded), and whether any more follow."""
    page: list[Job] = []
    seen = start = 0
    while seen <= skip + count and (batch := window(start, SCAN_WINDOW)):
        for job in batch:
            if contains(job, text):
                if skip <= seen < skip + count:
                    page.append(job)
                seen += 1
        start += SCAN_WINDOW
    return page, seen > skip + count


FILTER_WINDOW = 1000  # entries read per round trip while filtering a page
Entries = list[tuple[str, float | None]]  # entries as stored, each with its score (None in a queue)


def filtered(window: Callable[[int, int], Entries], text: str, skip: int,
             count: int) -> tuple[list[Job], bool]:
    """As ``matching``, faster: an entry is compared as the text Redis sent, and only a match is
    parsed, so a filter that matches few entries costs little more than reading the list (a text
    with non-ASCII letters is compared as ``contains`` does, the payload parsed first)."""
    needle = text.lower()
    plain = needle.isascii()  # then the raw text holds it exactly where the parsed payload does
    page: list[Job] = []
    seen = start = 0  # the matches skipped are counted, not kept: a page far down holds one page
    while seen <= skip + count and (batch := window(start, FILTER_WINDOW)):
        for raw, score in batch:
            if needle in raw.lower() or (not plain and contains(Job.parse(raw, score), text)):
                if skip <= seen < skip + count:
                    page.append(Job.parse(raw, score))
                seen += 1
        start += FILTER_WINDOW
    return page, seen > skip + count


def sorted_matching(entries: SortedSet, text: str, skip: int, count: int,
                    newest_first: bool = False) -> tuple[list[Job], bool]:
    """The ``count`` entries containing ``text`` after the first ``skip``, soonest (or latest)
    first, and whether more follow."""
    def window(start: int, size: int) -> Entries:
        found: list[tuple[str, float]] = entries.api.redis.zrange(  # type: ignore[assignment]
            entries.key, start, start + size - 1, desc=newest_first, withscores=True)
        return [(str(raw), float(score)) for raw, score in found]

    return filtered(window, text, skip, count)


def queue_matching(queue: Queue, text: str, skip: int, count: int,
                   newest_first: bool = False) -> tuple[list[Job], bool]:
    """The ``count`` jobs of a queue containing ``text`` after the first ``skip``, next to run (or
    newest) first, and whether more follow."""
    def window(start: int, size: int) -> Entries:
        if newest_first:
            return [(str(raw), None) for raw in queue.api.redis.lrange(queue.key, start, start + size - 1)]
        raws = queue.api.redis.lrange(queue.key, -(start + size), -1 - start)
        return [(str(raw), None) for raw in reversed(raws)]

    return filtered(window, text, skip, count)


def _seconds(text: str | None) -> float:
    """Epoch seconds another writer stored as text (a process's ``beat``); 0 for anything else,
    an infinite number included."""
    try:
        seconds = float(text or 0)
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) else 0.0


def running(process: Process) -> list[Found]:
    """The jobs a process is running, whoever wrote its work hash (Sidekiq 7 and 8 and kiq store
    the payload as JSON text, Sidekiq 6 as a hash)."""
    found = []
    for work in process.running:
        payload = work.get("payload")
        raw = payload if isinstance(payload, str) else json.dumps(payload)
        since = epoch_seconds(work.get("run_at"))
        found.append(Found("running", process.identity, Job.parse(raw), since, process.shard))
    return found


def search(api: API, text: str, limit: int = 25) -> dict[str, list[Found]]:
    """Jobs containing ``text`` (a jid, a class, an argument...) in every place, at most ``limit``
    per place, keyed by place."""
    places: dict[str, list[Found]] = {place: [] for place in PLACES}
    for queue in api.queues():
        want = limit - len(places["queue"])
        if want > 0:
            with contextlib.suppress(redis.ResponseError):  # a key of another type holds no job
                places["queue"] += [Found("queue", queue.name, job, shard=api.shard)
                                    for job in queue_matching(queue, text, 0, want)[0]]
    for entries in (api.scheduled, api.retries, api.dead):
        with contextlib.suppress(redis.ResponseError):
            places[entries.name] = [Found(entries.name, entries.name, job, shard=api.shard)
                                    for job in sorted_matching(entries, text, 0, limit)[0]]
    places["running"] = [found for process in api.processes() for found in running(process)
                         if contains(found.job, text)][:limit]
    return places


def find(jid: str, api: API | None = None) -> list[Found]:
    """Everywhere the job ``jid`` is: waiting in a queue, waiting there to run alone (a suspect,
    kiq.recovery), scheduled, in the retry or dead set, running, or taken by a worker (a job can
    be in two places for a moment, or for good if it was pushed twice).
    Queues are read a window at a time; the sets are scanned in Redis for the jid."""
    api = api or API()
    found = []
    queues = api.queues()
    for queue in queues:
        with contextlib.suppress(redis.ResponseError):  # a key of another type holds no job
            jobs, _ = queue_matching(queue, jid, 0, SCAN_WINDOW)
            found += [Found("queue", queue.name, job, shard=api.shard) for job in jobs if job.jid == jid]
    found += suspected(jid, api, [queue.name for queue in queues])
    for entries in (api.scheduled, api.retries, api.dead):
        with contextlib.suppress(redis.ResponseError):
            job = entries.find(jid)
            if job is not None:
                found.append(Found(entries.name, entries.name, job, shard=api.shard))
    running_here = [each for process in api.processes() for each in running(process) if each.job.jid == jid]
    return found + running_here + [each for each in taken(jid, api)
                                   if not any(run.name == each.name for run in running_here)]


def suspected(jid: str, api: API, queues: list[str]) -> list[Found]:
    """The job ``jid`` among the suspects of ``queues`` (kiq.recovery), waiting to run alone;
    one round trip for every list."""
    pipe = api.redis.pipeline(transaction=False)
    for name in queues:
        pipe.lrange(api.keys.suspects(name), 0, TAKEN_WINDOW - 1)
    found = []
    for name, raws in zip(queues, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(raws, list):  # not an error: a key of another type, written by something else
            found += [Found("suspect", name, job, shard=api.shard)
                      for job in map(Job.parse, map(str, raws)) if job.jid == jid]
    return found


def taken(jid: str, api: API) -> list[Found]:
    """The job ``jid`` in workers' in-progress lists: taken from its queue, held there until it
    starts, or running since less than a heartbeat (whose work hash lists it at the next beat).
    One round trip for every list, each read up to ``TAKEN_WINDOW`` jobs."""
    members = sorted(api.members(api.keys.wip_registry))
    pipe = api.redis.pipeline(transaction=False)
    for member in members:
        pipe.lrange(api.keys.wip_of(member), 0, TAKEN_WINDOW - 1)
    found = []
    for member, raws in zip(members, pipe.execute(raise_on_error=False), strict=True):
        identity = (owner(member) or (member, ""))[0]
        if isinstance(raws, list):  # not an error: a key of another type, written by something else
            found += [Found("taken", identity, job, shard=api.shard)
                      for job in map(Job.parse, map(str, raws)) if job.jid == jid]
    return found


# -- every shard at once (kiq.shards) ---------------------------------------------------------


class ShardedAPI:
    """One ``API`` per shard, read side by side: each shard keeps Sidekiq's layout and is read
    on its own; what it lists carries the shard's name. With one Redis it is that one ``API``.

    ``shards`` is a ``kiq.shards.Shards`` or the config file's ``shards`` mapping; without it,
    the one Redis of ``redis_url`` (found as the client finds it), or of ``connection``.

    What adds up (stats, the daily and hourly history, each class's metrics) is also read added
    up over every shard, for the dashboard (kiq.web)."""

    def __init__(self, shards: Shards | Mapping[str, Any] | None = None, namespace: str | None = None,
                 sidekiq_format: int | None = None, redis_url: str | None = None,
                 connection: redis.Redis | None = None) -> None:
        self.routes = Shards.parse(shards) if shards else Shards.single(redis_url or url_from_env(),
                                                                        Keys.using(namespace).namespace)
        self._namespace, self._format = namespace, sidekiq_format
        self._own = None if shards else connection  # a given connection is the one Redis's
        if self.routes.cluster is not None:  # every queue of the cluster is a shard, not only the configured
            self._own = self._own or connect(self.routes.cluster[0], name="kiq-api", retry=True)
            self.routes = self.routes.including(cluster_queues(self._own, self.routes.cluster[1]))
        self.apis = {shard.name: self._api(shard) for shard in self.routes}

    def _api(self, shard: Shard) -> API:
        namespace = self._namespace if shard.namespace is None else shard.namespace
        return API(shard.url, namespace, self._own, sidekiq_format=self._format, shard=shard.name)

    @property
    def default(self) -> API:
        """The first shard's: where queues no shard names live."""
        return self.apis[self.routes.default.name]

    @property
    def sharded(self) -> bool:
        return self.routes.sharded

    def api(self, shard: str) -> API:
        """The API of the shard named ``shard``; ValueError naming the shards if there is none."""
        return self.apis[self.routes.named(shard).name]

    def api_for(self, queue: str) -> API:
        """The API of the shard that ``queue`` lives on; on a Redis Cluster, one made now for a
        queue that held nothing when this was made (it is listed from then on)."""
        name = self.routes.route(queue).name
        if name not in self.apis:
            self.routes = self.routes.including([queue])
            self.apis[name] = self._api(self.routes.named(name))
        return self.apis[name]

    def stats(self) -> dict[str, Stats]:
        return {name: api.stats() for name, api in self.apis.items()}

    def queue_summaries(self) -> list[QueueSummary]:
        return [summary for api in self.apis.values() for summary in queue_summaries(api)]

    def processes(self) -> list[Process]:
        return [process for api in self.apis.values() for process in api.processes()]

    def find(self, jid: str) -> list[Found]:
        return [found for api in self.apis.values() for found in find(jid, api)]

    def search(self, text: str, limit: int = 25) -> dict[str, list[Found]]:
        """As ``search``, on every shard in turn: at most ``limit`` per place in all."""
        places: dict[str, list[Found]] = {place: [] for place in PLACES}
        for api in self.apis.values():
            for place, found in search(api, text, limit).items():
                places[place] += found[: limit - len(places[place])]
        return places

    def total(self) -> Stats:
        return total(self.stats())

    def history(self, days: int, now: float | None = None) -> list[tuple[str, int, int]]:
        """As ``history``, every shard's counters added up per day."""
        moment = time.time() if now is None else now
        return _added([history(api, days, moment) for api in self.apis.values()])

    def hourly(self, hours: int, now: float | None = None) -> list[tuple[str, int, int]]:
        """As ``hourly``, every shard's records added up per hour."""
        moment = time.time() if now is None else now
        return _added([hourly(api, hours, moment) for api in self.apis.values()])

    def job_metrics(self, minutes: int = 60, now: float | None = None) -> list[ClassMetrics]:
        """As ``API.job_metrics``, each class's metrics added up over the shards it ran on."""
        moment = time.time() if now is None else now
        classes: dict[str, ClassMetrics] = {}
        for api in self.apis.values():
            for each in api.job_metrics(minutes, moment):
                classes[each.name] = classes[each.name] + each if each.name in classes else each
        return [classes[name] for name in sorted(classes)]

    def periodic(self, entries: Sequence[Entry]) -> list[dict[str, Any]]:
        """``kiq.periodic.describe``'s row of each entry, with its ``shard``: read on the shard
        of its queue, where the master fires it and keeps its state. On a Redis Cluster that is
        the queue's own shard, a queue no job has reached yet included."""
        from kiq.periodic import describe

        by_shard: dict[str, list[Entry]] = {}
        for entry in entries:
            by_shard.setdefault(self.api_for(entry.queue).shard, []).append(entry)
        return [{**row, "shard": name} for name, mine in by_shard.items()
                for row in describe(self.apis[name].redis, self.apis[name].keys, mine)]

    def job_series(self, job_class: str, minutes: int = 60,
                   now: float | None = None) -> list[tuple[int, ClassMetrics]]:
        """As ``API.job_series``, each minute added up over the shards (the same minutes on each)."""
        moment = time.time() if now is None else now
        series = [api.job_series(job_class, minutes, moment) for api in self.apis.values()]
        return [(points[0][0], functools.reduce(operator.add, (each for _, each in points)))
                for points in zip(*series, strict=True)]


def cluster_queues(conn: redis.Redis, namespace: str) -> list[str]:
    """The queues a Redis Cluster holds, found by their ``{QUEUE}:queues`` sets on every primary.
    A key the pattern matches but no kiq queue can have (``{a}b}:queues``, written by something
    else) is left out rather than failing every reader of the cluster."""
    keys = Keys(namespace)
    found = {keys.cluster_queue_of(str(key)) for key in conn.scan_iter(match=keys.cluster_queues_pattern(),
                                                                           count=1000)}
    return sorted(queue for queue in found if queue and "{" not in queue and "}" not in queue)


def _added(tables: list[list[tuple[str, int, int]]]) -> list[tuple[str, int, int]]:
    """(label, processed, failed) rows of several shards, the same labels in the same order in
    each, added up per label."""
    return [(rows[0][0], sum(row[1] for row in rows), sum(row[2] for row in rows))
            for rows in zip(*tables, strict=True)]


def total(stats: dict[str, Stats]) -> Stats:
    """Every shard's stats added up."""
    fields = [name for name in vars(Stats(0, 0, 0, 0, 0, 0, 0, 0))]
    return Stats(**{name: sum(getattr(each, name) for each in stats.values()) for name in fields})

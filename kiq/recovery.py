"""Putting in-progress jobs back on their queues: after a worker dies, a host vanishes, or a worker stops.

Each worker moves every job it takes into ``kiq:wip:IDENTITY|QUEUE`` and
registers that list in the ``kiq:wip`` set, so whoever outlives it can find its
jobs without reading the payloads. Requeued jobs go to the front of their
queue, oldest first, because they were taken first.

A job that was running when its worker died is counted in ``kiq:recoveries:JID``
(kept a day); jobs the worker had only prefetched, or had finished without
acknowledging yet, are not. Which jobs were running comes from the worker's ledger
(kiq.ledger) when its supervisor reaps it, and from its last heartbeat's running jobs
(``IDENTITY:work``, kept twice the heartbeat TTL for this) when another master sweeps
a vanished host. A job counted ``POISON_LIMIT`` times at crashes where it ran alone, or where the
worker's fatal signal named its thread (kiq.ledger), is a poison pill: it goes to
``kiq:poison`` instead of its queue, and ``bury_poison`` moves it to the dead set with the
reason, so it stops killing workers.

A crash without a culprit (SIGKILL, the OOM killer) charges every job that was running, and
jobs requeued together are taken together again: an innocent job running beside a pill would
be charged at each of its crashes and buried with it. So a job that reaches the limit at a
crash it shared goes to ``kiq:suspects:QUEUE`` instead, where a worker holding no job takes it
(kiq.fetch) and runs it alone, taking nothing else meanwhile. Alone, an innocent job finishes,
and a pill crashes its worker once more, now the only one charged, and is buried.

Each script runs atomically in Redis, so masters sweeping at the same time
never requeue a job twice. A script touches only the keys its caller declares
(kiq.keys), so the caller reads first which lists a process has and the jids of
the jobs it was running; the sweep's script then checks again that the process
has no heartbeat before it moves anything.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from kiq import log, metrics
from kiq.connection import members, wire, wrong_type
from kiq.keys import Keys, owner
from kiq.ledger import Crash
from kiq.lua import IS_A
from kiq.payload import InvalidPayloadError, decode, dump, mark_failed, wrap_invalid
from kiq.retry import TRIM_DEAD, encode_backtrace

POISON_LIMIT = 3
POISON_PILL = "kiq.PoisonPill"  # the error_class of a buried poison pill
RECOVERY_MEMORY = 24 * 3600

# The scripts that requeue a process's lists (REQUEUE_ALL, SWEEP) take one process each, with
# KEYS: kiq:wip, processes, queues, kiq:poison, IDENTITY, IDENTITY:work, IDENTITY:workers,
# kiq:swept:IDENTITY, then per list its in-progress list, its queue and its kiq:suspects:QUEUE,
# then the recovery counters of the jobs it was running. ARGV: identity, how many lists, "1" if
# the crash was the running jobs' own (one job ran, or the crash named it) else "0", per list its
# queue and "1" if it was found outside the registry (else "0"), then per job it was running the
# payload's SHA-1 digest and the position of its counter in KEYS (0 for a payload without a jid:
# it counts nothing). Every script here checks a key's type before it takes a job out of a list
# (kiq.lua.IS_A).
_REQUEUE_LISTS = IS_A + """
local identity, lists, alone = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local running = {}
for i = 4 + 2 * lists, #ARGV, 2 do
  local entry = running[ARGV[i]] or {count = 0, counter = tonumber(ARGV[i + 1])}
  entry.count = entry.count + 1
  running[ARGV[i]] = entry
end

-- requeue(list): move the list-th in-progress list back to its queue. Only the jobs the
-- process was running count a recovery towards the poison-pill limit; one that reaches it is
-- a poison pill if it ran alone, else a suspect, to run alone next. A queue key of another
-- type leaves the list where it is, registered, for a later sweep (-1); an in-progress key of
-- another type holds no job kiq can read, and is forgotten.
local function requeue(list)
  local queue = ARGV[2 + 2 * list]
  local src, dst = KEYS[6 + 3 * list], KEYS[7 + 3 * list]
  if is_a(src, 'list') and not is_a(dst, 'list') then return -1 end
  -- a poison or suspects key of another type: the job goes back to its queue
  local poison = is_a(KEYS[4], 'list') and KEYS[4]
  local suspects = is_a(KEYS[8 + 3 * list], 'list') and KEYS[8 + 3 * list]
  local moved = 0
  local job = is_a(src, 'list') and redis.call('LPOP', src)
  while job do
    local target = dst
    local entry = next(running) and running[redis.sha1hex(job)]
    if entry and entry.count > 0 then
      entry.count = entry.count - 1
      if entry.counter > 0 then
        local counter = KEYS[entry.counter]
        local count = redis.pcall('INCR', counter)
        if type(count) == 'number' and count >= __LIMIT__ then
          if alone then target = poison or dst else target = suspects or dst end
        end
        redis.call('EXPIRE', counter, __MEMORY__)
      end
    end
    redis.call('RPUSH', target, job)
    if target ~= poison then moved = moved + 1 end
    job = redis.call('LPOP', src)
  end
  if moved > 0 then redis.pcall('SADD', KEYS[3], queue) end
  redis.pcall('SREM', KEYS[1], identity .. '|' .. queue)
  return moved
end

-- Requeues every list, then the process leaves ``processes`` and its entries, and a tombstone
-- for a worker that was only paused to find (kiq.lease). Returns queue, count, queue, count, ...
local function requeue_all()
  local moved = {}
  for list = 1, lists do
    moved[#moved + 1] = ARGV[2 + 2 * list]
    moved[#moved + 1] = requeue(list)
  end
  redis.pcall('SREM', KEYS[2], identity)
  redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  redis.call('SET', KEYS[8], '1', 'EX', __MEMORY__)
  return moved
end
""".replace("__LIMIT__", str(POISON_LIMIT)).replace("__MEMORY__", str(RECOVERY_MEMORY))

# Requeues a process that is gone: its supervisor reaped it, or it stops and requeues its own.
REQUEUE_ALL = _REQUEUE_LISTS + """
return requeue_all()
"""

# Requeues a process whose heartbeat expired (a vanished host), if it still has none: its
# caller found it so without a lock. A process with lists that still looks alive keeps them;
# those found outside the registry are registered, so that later sweeps judge them again
# (best effort: at maxmemory Redis refuses the add, and the next orphan check finds them again).
# A process without lists leaves ``processes``.
SWEEP = _REQUEUE_LISTS + """
if redis.call('EXISTS', KEYS[5]) == 1 then
  for list = 1, lists do
    if ARGV[3 + 2 * list] == '1' then redis.pcall('SADD', KEYS[1], identity .. '|' .. ARGV[2 + 2 * list]) end
  end
  return {}
end
if lists == 0 then
  redis.pcall('SREM', KEYS[2], identity)
  return {}
end
return requeue_all()
"""

# Gives back jobs a worker took but never started. KEYS: per queue the worker's in-progress
# list and the queue. ARGV: (which of those pairs, payload) pairs, newest first. Returns the
# number requeued and the number left in progress because their queue key is of another type.
GIVE_BACK = IS_A + """
local moved, left = 0, 0
for i = 1, #ARGV, 2 do
  local pair = tonumber(ARGV[i])
  local src, dst = KEYS[2 * pair - 1], KEYS[2 * pair]
  if not (is_a(src, 'list') and is_a(dst, 'list')) then
    left = left + 1
  elseif redis.call('LREM', src, -1, ARGV[i + 1]) == 1 then
    redis.call('RPUSH', dst, ARGV[i + 1])
    moved = moved + 1
  end
end
return {moved, left}
"""

# KEYS: per registered list of a worker the list and its queue. ARGV: the payloads the worker
# holds. Requeues every other job in those lists, oldest at the front; a list whose queue key
# (or which itself) is of another type is left as it is.
REQUEUE_STRAYS = IS_A + """
local held = {}
for i = 1, #ARGV do held[ARGV[i]] = (held[ARGV[i]] or 0) + 1 end
local moved = 0
for pair = 1, #KEYS / 2 do
  local src, dst = KEYS[2 * pair - 1], KEYS[2 * pair]
  if is_a(src, 'list') and is_a(dst, 'list') then
    for _, job in ipairs(redis.call('LRANGE', src, 0, -1)) do
      if (held[job] or 0) > 0 then
        held[job] = held[job] - 1
      else
        redis.call('LREM', src, 1, job)
        redis.call('RPUSH', dst, job)
        moved = moved + 1
      end
    end
  end
end
return moved
"""

# KEYS: kiq:poison, dead. ARGV: now, then (poison payload, dead payload) pairs. Buries none
# while either key is of another type.
BURY = TRIM_DEAD + IS_A + """
if not (is_a(KEYS[1], 'list') and is_a(KEYS[2], 'zset')) then return 0 end
local now = ARGV[1]
local buried = 0
for i = 2, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], now, ARGV[i + 1])
    buried = buried + 1
  end
end
trim_dead(KEYS[2], now)
return buried
"""

logger = log.get("kiq.recovery")
Running = list[tuple[str, str | None]]  # per job a process was running: its digest, its counter
UNREADABLE = (ValueError, AttributeError, RecursionError)  # not JSON, not an object, nested too deep


class Recovery:
    def __init__(self, conn: redis.Redis, keys: Keys) -> None:
        self.conn = conn
        self.keys = keys
        self._requeue_all = conn.register_script(REQUEUE_ALL)
        self._sweep = conn.register_script(SWEEP)
        self._give_back = conn.register_script(GIVE_BACK)
        self._requeue_strays = conn.register_script(REQUEUE_STRAYS)
        self._bury = conn.register_script(BURY)
        self._said: set[str] = set()  # keys of another type already logged

    def requeue_all(self, identity: str, queues: Sequence[str] = (), running: Sequence[str] = (),
                    crashed: bool = True, crash: Crash | None = None) -> int:
        """Requeue everything ``identity`` held (its lists of ``queues``, and any other the
        registry names) and remove it from ``processes``.

        ``running`` holds the SHA-1 digests of the payloads the process was running when it
        died (kiq.ledger): only those jobs count a recovery towards the poison-pill limit,
        never jobs it had only prefetched or had finished without acknowledging yet. A
        worker requeueing its own unfinished jobs at a stop passes none, and ``crashed=False``
        keeps them out of the recovered metric. ``crash`` names the job whose thread crashed
        the process: buried as a poison pill, it carries the crash's frames.
        """
        lists = dict.fromkeys([*queues, *self._registered(identity)], False)
        counted = self._counted(identity, lists, running) if running else []
        alone = crash is not None or len(running) == 1
        counts = self._requeue_all(**self._lists_call(identity, lists, counted, alone))
        if counted and not alone:
            self._check_suspects(lists)
        if not crashed:
            return _total(counts, None)
        self.bury_poison(crash)
        return _total(counts, "crash")

    def sweep(self, unregistered: Iterable[str] = ()) -> int:
        """Requeue the jobs of every process whose heartbeat expired; returns how many. The
        lists are those of the registry, and ``unregistered`` ones (``identity|queue``).

        Which processes look dead is read first, then one script per such process checks
        again and requeues its lists, so a process whose entry is back keeps its jobs."""
        owners = self._owners(unregistered)
        pipe = self.conn.pipeline(transaction=False)
        for identity in owners:
            pipe.exists(self.keys.process(identity))
        suspects = [identity for (identity, lists), alive in zip(owners.items(), pipe.execute(), strict=True)
                    if not alive or any(lists.values())]
        for identity in suspects:
            pipe.hvals(self.keys.work(identity))
        total = 0
        for identity, work in zip(suspects, pipe.execute(raise_on_error=False), strict=True):
            running = self._running_of(work if isinstance(work, list) else [])
            alone = len(running) == 1
            try:
                counts = self._sweep(**self._lists_call(identity, owners[identity], running, alone))
            except redis.ResponseError as error:  # one process's broken keys must not keep the others' jobs
                if not wrong_type(error):
                    raise  # Redis refuses (writes, say): the sweeper waits for it, as for an outage
                logger.error("could not requeue the jobs of a process whose heartbeat expired",
                             process=identity, error=str(error))
                continue
            total += _total(counts, "host_lost")
        self.bury_poison()
        return total

    def give_back(self, identity: str, jobs: Sequence[tuple[str, str]]) -> int:
        """Requeue ``(queue, payload)`` pairs, oldest first in ``jobs``, at the queue's front."""
        if not jobs:
            return 0
        pairs: dict[str, int] = {}
        keys: list[str] = []
        args: list[str | bytes | int] = []
        for queue, payload in reversed(jobs):
            if queue not in pairs:
                pairs[queue] = len(pairs) + 1
                keys += [self.keys.wip(identity, queue), self.keys.queue(queue)]
            args += [pairs[queue], wire(payload)]
        moved, left = self._give_back(keys=keys, args=args)
        if left:
            logger.error("could not give back jobs: their queue key is not a list; they stay in progress "
                         "here and go back when the queue is fixed or deleted", jobs=left)
        return int(moved)

    def requeue_strays(self, identity: str, held: Sequence[str]) -> int:
        keys = [key for queue in self._registered(identity)
                for key in (self.keys.wip(identity, queue), self.keys.queue(queue))]
        if not keys:
            return 0
        return int(self._requeue_strays(keys=keys, args=list(map(wire, held))))

    def bury_poison(self, crash: Crash | None = None) -> int:
        """Move poison pills to the dead set with the reason (and ``crash``'s, for its job);
        returns how many."""
        buried = 0
        while raws := self._listed(self.keys.poison, 100):
            now = time.time()
            args: list[str | bytes | float] = [now]
            for raw in map(str, raws):
                args += [wire(raw), dump(_poisoned(raw, now, crash))]
            done = int(self._bury(keys=[self.keys.poison, self.keys.dead], args=args))
            if not done:
                logger.error("could not bury poison pills: the dead set's key is not a sorted set",
                             key=self.keys.dead)
                break
            buried += done
            logger.error(f"poison pills to the dead set: each was running when its worker died "
                         f"{POISON_LIMIT} times or more, the last time alone (kiq dead show JID)", jobs=done,
                         jids=[_named(str(raw)) for raw in raws[:10]])
        return buried

    def forget(self, payloads: Sequence[str]) -> None:
        """Delete the crash counts of these jobs (suspects that ran alone and ended). Best
        effort: a count left expires within a day."""
        counters = [counter for counter in map(self._counter, payloads) if counter is not None]
        try:
            if counters:
                self.conn.delete(*counters)
        except redis.RedisError as error:
            logger.info("could not clear the crash counts of suspects that ran alone", error=str(error))

    def _check_suspects(self, queues: Iterable[str]) -> None:
        """Say so when a suspects key is of another type: the requeue sent its suspects back to
        their queue, so a pill among them cannot be buried and keeps crashing workers."""
        keys = [self.keys.suspects(queue) for queue in queues]
        pipe = self.conn.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        try:
            kinds = pipe.execute()
        except redis.RedisError:  # only a look: the requeue has happened, and must not seem failed
            return
        for key, kind in zip(keys, kinds, strict=True):
            if kind not in ("list", "none"):
                self._say_once(key, "a key kiq keeps a list in is of another type; fix or delete it "
                               "(until then no job that crashed its worker beside others is buried)")

    def _listed(self, key: str, count: int) -> list[Any]:
        """The first ``count`` entries of a list; none if anything made ``key`` another type."""
        try:
            return list(self.conn.lrange(key, 0, count - 1))
        except redis.ResponseError as error:
            if not wrong_type(error):
                raise
            self._say_once(key, "a key kiq keeps a list in is of another type; fix or delete it")
            return []

    def _members(self, key: str) -> list[str]:
        """The members of a set; none if anything made ``key`` another type (the sweep's orphan
        check still finds the lists by their names)."""
        found = members(self.conn, key)
        if found is None:
            self._say_once(key, "a key kiq keeps a set in is of another type; fix or delete it")
        return found or []

    def _say_once(self, key: str, message: str) -> None:
        """Log a key of another type the first time this Recovery meets it (sweeps run often)."""
        if key not in self._said:
            self._said.add(key)
            logger.error(message, key=key)

    def _registered(self, identity: str) -> list[str]:
        """The queues of ``identity``'s lists that the registry names."""
        found = map(owner, self._members(self.keys.wip_registry))
        return [pair[1] for pair in found if pair and pair[0] == identity]

    def _owners(self, unregistered: Iterable[str]) -> dict[str, dict[str, bool]]:
        """Every process the sweep judges: those in ``processes`` or owning a list, each with its
        lists' queues (True for a list found only outside the registry). A registry member
        that is none of kiq's is skipped."""
        processes, registered = self._members(self.keys.processes), self._members(self.keys.wip_registry)
        owners: dict[str, dict[str, bool]] = {identity: {} for identity in processes}
        for found, listed in ((False, registered), (True, unregistered)):
            for pair in filter(None, map(owner, map(str, listed))):
                owners.setdefault(pair[0], {}).setdefault(pair[1], found)
        return owners

    def _counted(self, identity: str, lists: dict[str, bool], running: Sequence[str]) -> Running:
        """The jobs of ``running`` (digests from the ledger) with the counters of the payloads
        they match in ``identity``'s lists."""
        pipe = self.conn.pipeline(transaction=False)
        for queue in lists:
            pipe.lrange(self.keys.wip(identity, queue), 0, -1)
        wanted = set(running)
        counters: dict[str, str | None] = {}
        for payload in (str(job) for jobs in pipe.execute() for job in jobs):
            digest = _digest(payload)
            if digest in wanted:
                counters[digest] = self._counter(payload)
        return [(digest, counters[digest]) for digest in running if digest in counters]

    def _running_of(self, work: Iterable[str]) -> Running:
        """The jobs a process's last heartbeat listed as running (``IDENTITY:work``), with their counters."""
        running: Running = []
        for entry in work:
            try:
                payload = json.loads(entry).get("payload")
            except UNREADABLE:
                continue
            if isinstance(payload, str):
                running.append((_digest(payload), self._counter(payload)))
        return running

    def _counter(self, payload: str) -> str | None:
        """The recovery counter of a payload's jid; None for a payload without one."""
        try:
            jid = json.loads(payload).get("jid")
        except UNREADABLE:
            return None
        return self.keys.recoveries(jid) if isinstance(jid, str) else None

    def _lists_call(self, identity: str, lists: dict[str, bool], running: Running,
                    alone: bool) -> dict[str, Any]:
        """KEYS and ARGV of REQUEUE_ALL or SWEEP for ``identity``'s ``lists`` (queue: found
        outside the registry); ``alone``: the crash was the running jobs' own doing."""
        k = self.keys
        keys = [k.wip_registry, k.processes, k.queues, k.poison, k.process(identity), k.work(identity),
                k.workers(identity), k.swept(identity)]
        args: list[str | int] = [identity, len(lists), "1" if alone else "0"]
        for queue, found in lists.items():
            keys += [k.wip(identity, queue), k.queue(queue), k.suspects(queue)]
            args += [queue, "1" if found else "0"]
        counters: dict[str, int] = {}
        for digest, counter in running:
            if counter is not None and counter not in counters:
                keys.append(counter)
                counters[counter] = len(keys)
            args += [digest, counters[counter] if counter is not None else 0]
        return {"keys": keys, "args": args}


def _total(counts: list[Any], reason: str | None) -> int:
    """Add up a script's queue/count pairs, counting them as recovered for ``reason``; a count
    of -1 is a list left in progress because its queue key is of another type."""
    total = 0
    for index in range(0, len(counts), 2):
        queue, moved = str(counts[index]), int(counts[index + 1])
        if moved < 0:
            logger.error("could not requeue jobs: their queue key is not a list; they stay in an "
                         "in-progress list, requeued by a later sweep once the key is fixed or deleted",
                         queue=queue)
            continue
        total += moved
        if reason and moved:
            metrics.recovered.labels(queue, reason).inc(moved)
    return total


def _named(raw: str) -> str:
    """A poison pill's jid and class, for the log line that says it was buried."""
    try:
        payload = decode(raw)
    except InvalidPayloadError:
        return "(unreadable)"
    return f"{payload.get('jid')} {payload.get('class')}"


def _poisoned(raw: str, now: float, crash: Crash | None) -> dict[str, object]:
    reason = (f"job was running when its worker died {POISON_LIMIT} times or more, the last time alone; "
              "not retried (poison pill)")
    if crash is not None and _digest(raw) != crash.digest:
        crash = None
    if crash is not None:
        reason += f"; the last crash: {crash.what} in its thread"
    try:
        payload = decode(raw)
    except InvalidPayloadError:
        return wrap_invalid("", raw, reason)
    payload = mark_failed(payload, POISON_PILL, reason, now)
    if crash is not None and crash.frames:
        payload["error_backtrace"] = encode_backtrace(crash.frames)
    return payload


def _digest(payload: str) -> str:
    """The SHA-1 digest of a payload's bytes, as kiq.ledger and Lua's ``redis.sha1hex`` write it."""
    return hashlib.sha1(wire(payload), usedforsecurity=False).hexdigest()

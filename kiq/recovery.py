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
a vanished host. A job counted ``POISON_LIMIT`` times is a poison pill: it goes to
``kiq:poison`` instead of its queue, and ``bury_poison`` moves it to the dead set with
the reason, so it stops killing workers.

Each script runs atomically in Redis, so masters sweeping at the same time
never requeue a job twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from kiq import metrics
from kiq.connection import wire
from kiq.keys import Keys
from kiq.payload import InvalidPayloadError, decode, mark_failed, wrap_invalid
from kiq.retry import TRIM_DEAD

POISON_LIMIT = 3
RECOVERY_MEMORY = 24 * 3600

# requeue(prefix, member, running): move one in-progress list back to its queue. ``running``
# maps SHA-1 digests of the payloads the process was running when it died to how many times;
# only those jobs count a recovery towards the poison-pill limit (see Recovery.requeue_all).
_REQUEUE_LIST = """
local function requeue(prefix, member, running)
  local queue = string.sub(member, string.find(member, '|', 1, true) + 1)
  local src = prefix .. 'kiq:wip:' .. member
  local dst = prefix .. 'queue:' .. queue
  local moved = 0
  local job = redis.call('LPOP', src)
  while job do
    local poisoned = false
    local digest = next(running) and redis.sha1hex(job)
    if digest and (running[digest] or 0) > 0 then
      running[digest] = running[digest] - 1
      local ok, decoded = pcall(cjson.decode, job)
      if ok and type(decoded) == 'table' and type(decoded['jid']) == 'string' then
        local key = prefix .. 'kiq:recoveries:' .. decoded['jid']
        poisoned = redis.call('INCR', key) >= __LIMIT__
        redis.call('EXPIRE', key, __MEMORY__)
      end
    end
    if poisoned then
      redis.call('RPUSH', prefix .. 'kiq:poison', job)
    else
      redis.call('RPUSH', dst, job)
      moved = moved + 1
    end
    job = redis.call('LPOP', src)
  end
  if moved > 0 then redis.call('SADD', prefix .. 'queues', queue) end
  redis.call('SREM', prefix .. 'kiq:wip', member)
  return moved
end

-- forget(prefix, identity): a process whose jobs were requeued leaves ``processes`` and
-- its entries, and a tombstone for a worker that was only paused to find (kiq.lease).
local function forget(prefix, identity)
  redis.call('SREM', prefix .. 'processes', identity)
  redis.call('DEL', prefix .. identity, prefix .. identity .. ':work', prefix .. identity .. ':workers')
  redis.call('SET', prefix .. 'kiq:swept:' .. identity, '1', 'EX', __MEMORY__)
end
""".replace("__LIMIT__", str(POISON_LIMIT)).replace("__MEMORY__", str(RECOVERY_MEMORY))

# ARGV: prefix, identity, how many queue names follow, the queue names, then the digests of
# the jobs it was running. Requeues the identity's lists of those queues and any other the
# registry names, forgets the process, and leaves a tombstone (as SWEEP does) so that a late
# round trip of that worker drops what it still holds. Returns queue, count, queue, count, ...
REQUEUE_ALL = _REQUEUE_LIST + """
local prefix, identity, named = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mark = identity .. '|'
local members, running = {}, {}
for i = 4, 3 + named do members[mark .. ARGV[i]] = true end
for i = 4 + named, #ARGV do running[ARGV[i]] = (running[ARGV[i]] or 0) + 1 end
for _, member in ipairs(redis.call('SMEMBERS', prefix .. 'kiq:wip')) do
  if string.sub(member, 1, #mark) == mark then members[member] = true end
end
local moved = {}
for member in pairs(members) do
  moved[#moved + 1] = string.sub(member, #mark + 1)
  moved[#moved + 1] = requeue(prefix, member, running)
end
forget(prefix, identity)
return moved
"""

# ARGV: prefix, then members found outside the registry (kiq.sweep's orphan check).
# Requeues the lists of every identity whose
# heartbeat expired (a vanished host), counting towards poison the jobs its last heartbeat
# listed as running, drops such identities from ``processes``, and leaves a tombstone
# (``kiq:swept:IDENTITY``) for a worker that was only paused to find when it comes back.
# Returns queue, count, queue, count, ...
SWEEP = _REQUEUE_LIST + """
local prefix = ARGV[1]
local function running_of(identity)
  local running = {}
  for _, entry in ipairs(redis.call('HVALS', prefix .. identity .. ':work')) do
    local ok, work = pcall(cjson.decode, entry)
    if ok and type(work) == 'table' and type(work['payload']) == 'string' then
      local digest = redis.sha1hex(work['payload'])
      running[digest] = (running[digest] or 0) + 1
    end
  end
  return running
end
local members = {}
for _, member in ipairs(redis.call('SMEMBERS', prefix .. 'kiq:wip')) do members[member] = 'registered' end
for i = 2, #ARGV do members[ARGV[i]] = members[ARGV[i]] or 'found' end
local moved, swept = {}, {}
for member, source in pairs(members) do
  local bar = string.find(member, '|', 1, true)  -- a member without one is none of kiq's: skipped
  local identity = bar and string.sub(member, 1, bar - 1)
  if identity and redis.call('EXISTS', prefix .. identity) == 0 then
    swept[identity] = swept[identity] or running_of(identity)
    moved[#moved + 1] = string.sub(member, bar + 1)
    moved[#moved + 1] = requeue(prefix, member, swept[identity])
  elseif identity and source == 'found' then
    -- Its owner still looks alive: registered, the next sweeps judge it again. Best effort:
    -- at maxmemory Redis refuses the add, and the next orphan check finds the list again.
    redis.pcall('SADD', prefix .. 'kiq:wip', member)
  end
end
for identity in pairs(swept) do forget(prefix, identity) end
for _, identity in ipairs(redis.call('SMEMBERS', prefix .. 'processes')) do
  if redis.call('EXISTS', prefix .. identity) == 0 then
    redis.call('SREM', prefix .. 'processes', identity)
  end
end
return moved
"""

# Gives back jobs a worker took but never started. ARGV: prefix, identity,
# then queue/payload pairs, newest first. Returns the number requeued.
GIVE_BACK = """
local prefix, identity = ARGV[1], ARGV[2]
local moved = 0
for i = 3, #ARGV, 2 do
  local queue, job = ARGV[i], ARGV[i + 1]
  if redis.call('LREM', prefix .. 'kiq:wip:' .. identity .. '|' .. queue, -1, job) == 1 then
    redis.call('RPUSH', prefix .. 'queue:' .. queue, job)
    moved = moved + 1
  end
end
return moved
"""

# ARGV: prefix, identity, then the payloads the worker holds. Requeues every
# other job in the identity's lists, oldest at the front.
REQUEUE_STRAYS = """
local prefix, identity = ARGV[1], ARGV[2]
local held = {}
for i = 3, #ARGV do held[ARGV[i]] = (held[ARGV[i]] or 0) + 1 end
local mark = identity .. '|'
local moved = 0
for _, member in ipairs(redis.call('SMEMBERS', prefix .. 'kiq:wip')) do
  if string.sub(member, 1, #mark) == mark then
    local src = prefix .. 'kiq:wip:' .. member
    local dst = prefix .. 'queue:' .. string.sub(member, #mark + 1)
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

# ARGV: prefix, now, then (poison payload, dead payload) pairs.
BURY = TRIM_DEAD + """
local prefix, now = ARGV[1], ARGV[2]
local buried = 0
for i = 3, #ARGV, 2 do
  if redis.call('LREM', prefix .. 'kiq:poison', 1, ARGV[i]) == 1 then
    redis.call('ZADD', prefix .. 'dead', now, ARGV[i + 1])
    buried = buried + 1
  end
end
trim_dead(prefix .. 'dead', now)
return buried
"""


class Recovery:
    def __init__(self, conn: redis.Redis, keys: Keys) -> None:
        self.conn = conn
        self.keys = keys
        self._requeue_all = conn.register_script(REQUEUE_ALL)
        self._sweep = conn.register_script(SWEEP)
        self._give_back = conn.register_script(GIVE_BACK)
        self._requeue_strays = conn.register_script(REQUEUE_STRAYS)
        self._bury = conn.register_script(BURY)

    def requeue_all(self, identity: str, queues: Sequence[str] = (), running: Sequence[str] = (),
                    crashed: bool = True) -> int:
        """Requeue everything ``identity`` held (its lists of ``queues``, and any other the
        registry names) and remove it from ``processes``.

        ``running`` holds the SHA-1 digests of the payloads the process was running when it
        died (kiq.ledger): only those jobs count a recovery towards the poison-pill limit,
        never jobs it had only prefetched or had finished without acknowledging yet. A
        worker requeueing its own unfinished jobs at a stop passes none, and ``crashed=False``
        keeps them out of the recovered metric.
        """
        counts = self._requeue_all(args=[self.keys.prefix, identity, len(queues), *queues, *running])
        if not crashed:
            return _total(counts, None)
        self.bury_poison()
        return _total(counts, "crash")

    def sweep(self, unregistered: Iterable[str] = ()) -> int:
        """Requeue the jobs of every process whose heartbeat expired; returns how many. The
        lists are those of the registry, and ``unregistered`` ones (``identity|queue``)."""
        counts = self._sweep(args=[self.keys.prefix, *unregistered])
        self.bury_poison()
        return _total(counts, "host_lost")

    def give_back(self, identity: str, jobs: Sequence[tuple[str, str]]) -> int:
        """Requeue ``(queue, payload)`` pairs, oldest first in ``jobs``, at the queue's front."""
        if not jobs:
            return 0
        args: list[str | bytes] = [self.keys.prefix, identity]
        for queue, payload in reversed(jobs):
            args += [queue, wire(payload)]
        return int(self._give_back(args=args))

    def requeue_strays(self, identity: str, held: Sequence[str]) -> int:
        return int(self._requeue_strays(args=[self.keys.prefix, identity, *map(wire, held)]))

    def bury_poison(self) -> int:
        """Move poison pills to the dead set with the reason; returns how many."""
        buried = 0
        while raws := self.conn.lrange(self.keys.poison, 0, 99):
            now = time.time()
            args: list[str | bytes | float] = [self.keys.prefix, now]
            for raw in map(str, raws):
                args += [wire(raw), json.dumps(_poisoned(raw, now), separators=(",", ":"))]
            buried += int(self._bury(args=args))
        return buried


def _total(counts: list[Any], reason: str | None) -> int:
    """Add up a script's queue/count pairs, counting them as recovered for ``reason``."""
    total = 0
    for index in range(0, len(counts), 2):
        queue, moved = str(counts[index]), int(counts[index + 1])
        total += moved
        if reason and moved:
            metrics.recovered.labels(queue, reason).inc(moved)
    return total


def _poisoned(raw: str, now: float) -> dict[str, object]:
    reason = f"job was running when its worker died {POISON_LIMIT} times; not retried (poison pill)"
    try:
        payload = decode(raw)
    except InvalidPayloadError:
        return wrap_invalid("", raw, reason)
    return mark_failed(payload, "kiq.PoisonPill", reason, now)

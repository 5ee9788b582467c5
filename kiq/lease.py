"""A worker's lease on the jobs it holds: it starts one only while Redis still counts it alive.

Any master requeues the in-progress jobs of a process whose ``IDENTITY`` key expired
(kiq.recovery's sweep). A worker that was only paused (SIGSTOP, a long GC pause, a network
partition, Redis refusing its writes) then holds jobs that are back on their queues, and
starting them would run them twice. So every call that finds the worker's key alive extends
the key's TTL and renews the lease until most of that TTL has passed, counted from before the
call was sent: until then no sweep can have taken the worker's jobs. Once the lease has run
out, the worker starts nothing until Redis has answered again.

If the key is gone, the worker reclaims: one script recreates the key and says how many copies
of each job the worker holds are still in its in-progress lists. A job that is not was requeued
by a sweep (which leaves a tombstone, ``kiq:swept:IDENTITY``) and is dropped; without a
tombstone, Redis lost its data (a restart without persistence), this worker holds the only
copy, and the job goes back into its list.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from kiq.connection import wire
from kiq.keys import Keys, member
from kiq.lua import IS_A

SHARE = 0.9  # of the TTL that a renewal lets the worker start jobs for

# KEYS: kiq:swept:IDENTITY, IDENTITY, processes, kiq:wip, then the worker's in-progress lists.
# ARGV: identity, TTL in ms, info, now, how many kiq:wip members follow, the members, then
# (position in KEYS of the job's in-progress list, payload, copies held) triples. Returns 1 if a
# sweep took the worker's jobs, how many copies it pushed back (Redis had lost them), then the
# copies of each triple's job that are still this worker's.
RECLAIM = IS_A + """
local identity, ttl, info, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local members = tonumber(ARGV[5])
-- Deleting the tombstone tells whether there was one, and is a write Redis accepts at
-- maxmemory, after which it accepts the script's other writes too.
local swept = redis.call('DEL', KEYS[1]) == 1
local lists, out = {}, {swept and 1 or 0, 0}
for i = 6 + members, #ARGV, 3 do
  local wip = KEYS[tonumber(ARGV[i])]
  local job, held = ARGV[i + 1], tonumber(ARGV[i + 2])
  if not lists[wip] then
    lists[wip] = {}
    if not is_a(wip, 'list') then lists[wip] = false end  -- written by something else: holds none
    for _, present in ipairs(lists[wip] and redis.call('LRANGE', wip, 0, -1) or {}) do
      lists[wip][present] = (lists[wip][present] or 0) + 1
    end
  end
  local kept = math.min(held, lists[wip] and lists[wip][job] or 0)
  if lists[wip] then lists[wip][job] = (lists[wip][job] or 0) - kept end
  if not swept then  -- Redis lost the list: the worker's copies are the only ones, kept
    if lists[wip] then
      for _ = kept + 1, held do redis.call('LPUSH', wip, job) end
      out[2] = out[2] + held - kept
    end
    kept = held
  end
  out[#out + 1] = kept
end
redis.pcall('HSET', KEYS[2], 'info', info, 'beat', now)  -- the next beat writes the rest
redis.call('PEXPIRE', KEYS[2], ttl)
redis.pcall('SADD', KEYS[3], identity)
for i = 6, 5 + members do redis.pcall('SADD', KEYS[4], ARGV[i]) end
return out
"""


class Lease:
    """Until when (``time.monotonic()``) the worker may start the jobs it holds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.until = 0.0

    def renew(self, sent_at: float) -> bool:
        """Redis found the key alive in a call sent at ``sent_at``; True if the lease had run out."""
        expired = not self.valid()
        self.until = max(self.until, sent_at + SHARE * self.ttl)
        return expired

    def valid(self) -> bool:
        return time.monotonic() < self.until

    def end(self) -> None:
        self.until = 0.0


class Reclaimer:
    """Runs RECLAIM for one worker."""

    def __init__(self, conn: redis.Redis, keys: Keys, identity: str, ttl: float, queues: Sequence[str],
                 info: str) -> None:
        self.identity = identity
        self.ttl_ms = int(ttl * 1000)
        self.members = [member(identity, queue) for queue in queues]
        self.info = info
        self._keys = [keys.swept(identity), keys.process(identity), keys.processes, keys.wip_registry,
                      *(keys.wip(identity, queue) for queue in queues)]
        self._lists = {queue: 5 + n for n, queue in enumerate(queues)}  # where its list is in KEYS[]
        self._script = conn.register_script(RECLAIM)

    def reclaim(self, held: Mapping[Any, int]) -> tuple[bool, int, dict[Any, int]]:
        """Recreate the worker's key; returns whether it was swept, how many copies of the jobs
        it holds it put back (Redis had lost them), and how many copies of each held unit (a
        ``(queue, payload)`` pair of one of the worker's queues, with the count held) are still
        its own."""
        units = list(held.items())
        args: list[str | bytes | int | float] = [self.identity, self.ttl_ms, self.info, time.time(),
                                                 len(self.members), *self.members]
        for (queue, payload), count in units:
            args += [self._lists[queue], wire(payload), count]
        reply = self._script(keys=self._keys, args=args)
        kept = {unit: int(copies) for (unit, _), copies in zip(units, reply[2:], strict=True)}
        return reply[0] == 1, int(reply[1]), kept

"""Putting a worker's in-progress jobs back on their queues: after it dies, and when it stops.

Each worker moves every job it takes into ``kiq:wip:IDENTITY|QUEUE`` and
registers that list in the ``kiq:wip`` set, so whoever outlives it can find its
jobs without reading the payloads. Requeued jobs go to the front of their
queue, oldest first, because they were taken first.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from kiq.connection import wire
from kiq.keys import Keys

# Moves all of one identity's in-progress lists back and forgets the process.
# ARGV: prefix, identity. Returns the number of jobs requeued.
REQUEUE_ALL = """
local prefix, identity = ARGV[1], ARGV[2]
local registry = prefix .. 'kiq:wip'
local mark = identity .. '|'
local moved = 0
for _, member in ipairs(redis.call('SMEMBERS', registry)) do
  if string.sub(member, 1, #mark) == mark then
    local queue = string.sub(member, #mark + 1)
    local src = prefix .. 'kiq:wip:' .. member
    local dst = prefix .. 'queue:' .. queue
    local job = redis.call('LPOP', src)
    if job then redis.call('SADD', prefix .. 'queues', queue) end
    while job do
      redis.call('RPUSH', dst, job)
      moved = moved + 1
      job = redis.call('LPOP', src)
    end
    redis.call('SREM', registry, member)
  end
end
redis.call('SREM', prefix .. 'processes', identity)
redis.call('DEL', prefix .. identity, prefix .. identity .. ':work', prefix .. identity .. ':workers')
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


class Recovery:
    def __init__(self, conn: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._requeue_all = conn.register_script(REQUEUE_ALL)
        self._give_back = conn.register_script(GIVE_BACK)

    def requeue_all(self, identity: str) -> int:
        """Requeue everything ``identity`` held and remove it from ``processes``."""
        return int(self._requeue_all(args=[self.keys.prefix, identity]))

    def give_back(self, identity: str, jobs: Sequence[tuple[str, str]]) -> int:
        """Requeue ``(queue, payload)`` pairs, oldest first in ``jobs``, at the queue's front."""
        if not jobs:
            return 0
        args: list[str | bytes] = [self.keys.prefix, identity]
        for queue, payload in reversed(jobs):
            args += [queue, wire(payload)]
        return int(self._give_back(args=args))

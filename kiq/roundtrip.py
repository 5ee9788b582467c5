"""A worker's round trip to Redis: acknowledge the jobs it finished and take new ones, in one call.

The fetcher (kiq.fetch) makes every round trip through ``RoundTrip.send``, one call of the
ACK_AND_FETCH script, which atomically, for one worker:

1. extends the worker's entry (its heartbeat key); if the entry has expired, does nothing
   else and ``send`` raises Lapsed (kiq.lease);
2. removes each finished job from the worker's in-progress list, files it in ``retry`` or
   ``dead`` when its outcome says so and the job was still there, and counts the stats;
3. adds the worker's tallies of the jobs it finished, per class and minute, to Sidekiq 7's
   execution metrics (kiq.execution);
4. moves up to the wanted number of jobs from the queues into the worker's in-progress lists,
   each from its weighted pick or else from the first queue in the round trip's order that
   has one, and registers those lists in ``kiq:wip``; but when a queue has a suspect
   (kiq.recovery) and the worker may take one, it takes that job alone instead.

So a job is always in Redis: in its queue, in an in-progress list, or in a sorted set. Every
key reaches the script through ``KEYS[]`` (Redis's rule for scripts, which Redis Cluster
enforces); the list is worked out once and again when the UTC day, and so the daily stat
keys, changes; the metrics keys of each tally are added to it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import redis

from kiq.connection import evalsha, wire
from kiq.execution import RETENTION, Tally
from kiq.heartbeat import Lapsed
from kiq.keys import Keys, day, minute_names
from kiq.retry import TRIM_DEAD, Outcome

DAY = 24 * 3600
STAT_TTL = 5 * 365 * DAY

# KEYS: the worker's entry, retry, dead, stat:processed, stat:failed, today's stat:processed:DATE
# and stat:failed:DATE, kiq:wip, then for each queue Q of the worker (Q = 1, 2, ...) its
# queue:NAME, its in-progress list kiq:wip:IDENTITY|NAME and its kiq:suspects:NAME, then for each
# tally T (T = 1, 2, ...) its minute's metrics hash j|DATE|H:M and its class's histogram CLASS-DD-HH:M.
# ARGV: now, the heartbeat TTL in ms, how many tallies, the metrics' retention in seconds, each
# queue's member of kiq:wip (IDENTITY|NAME), how many acknowledgements follow, then each one:
# Q, PAYLOAD for a job that succeeded, or -Q, PAYLOAD, ACTION, NEW PAYLOAD, SCORE, FAILED for any
# other end; then each tally: CLASS, PROCESSED, FAILED, MS, how many histogram buckets follow,
# and each bucket's INDEX (from 0) and COUNT; then "1" if the worker may take a suspect, how
# many jobs to take, how many per-job picks follow, the picks, and the order in which to try every
# queue when a pick is empty (queues by Q). Returns {0} if the worker's entry has expired, else 1,
# how many problems, 1 if the job taken is a suspect (else 0), each problem (N of an
# acknowledgement left in progress, or -Q of a queue not read, and the reason), then Q, PAYLOAD, ...
# Extending the entry comes first: Redis accepts it even at maxmemory, and then the rest of
# the script.
ACK_AND_FETCH = TRIM_DEAD + """
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then return {0} end
local tallies = tonumber(ARGV[3])
local queues = (#KEYS - 8 - 2 * tallies) / 3
local tallied = 8 + 3 * queues
local function queue(q) return KEYS[6 + 3 * q] end
local function wip(q) return KEYS[7 + 3 * q] end
local function suspects(q) return KEYS[8 + 3 * q] end
local function minute(t) return KEYS[tallied + 2 * t - 1] end
local function histogram(t) return KEYS[tallied + 2 * t] end
-- What a key of another type, written by anything with access to Redis, kept this call from
-- doing: the acknowledgement (by number) or the queue (by -Q) it concerns, and why. The rest
-- goes on: one such key must not stop a worker.
local problems = {}
local function problem(which, why)
  problems[#problems + 1] = which
  problems[#problems + 1] = why
end
local i = 6 + queues
local processed, failed, died = 0, 0, false
for n = 1, tonumber(ARGV[5 + queues]) do
  local q, job = tonumber(ARGV[i]), ARGV[i + 1]
  if q > 0 then
    redis.pcall('LREM', wip(q), -1, job)
    i = i + 2
  else
    local action = ARGV[i + 2]
    local files, into, kind = action == 'retry' or action == 'dead', KEYS[2], 'none'
    if action == 'dead' then into = KEYS[3] end
    if files then kind = redis.call('TYPE', into)['ok'] end
    if kind ~= 'zset' and kind ~= 'none' then
      problem(n, into .. ' is a ' .. kind .. ', not a sorted set')  -- the job stays in progress
    -- A job no longer in progress here was requeued (a stop, a sweep): filing it in retry
    -- or dead as well would run it twice.
    elseif redis.pcall('LREM', wip(-q), -1, job) == 1 and files then
      local filed = redis.pcall('ZADD', into, ARGV[i + 4], ARGV[i + 3])
      if type(filed) == 'table' then
        redis.call('RPUSH', wip(-q), job)  -- in progress again, as it was
        problem(n, filed['err'])
      elseif action == 'dead' then
        died = true
      end
    end
    if ARGV[i + 5] == '1' then failed = failed + 1 end
    i = i + 6
  end
  processed = processed + 1
end
-- Counted with pcall, as the metrics below: a stat key of another type loses its count only.
if processed > 0 then
  redis.pcall('INCRBY', KEYS[4], processed)
  redis.pcall('INCRBY', KEYS[6], processed)
  redis.call('EXPIRE', KEYS[6], __STAT_TTL__)
end
if failed > 0 then
  redis.pcall('INCRBY', KEYS[5], failed)
  redis.pcall('INCRBY', KEYS[7], failed)
  redis.call('EXPIRE', KEYS[7], __STAT_TTL__)
end
if died then trim_dead(KEYS[3], ARGV[1]) end
-- As Sidekiq 7 records them: run time and histogram for the jobs that succeeded only. Best
-- effort (pcall): a metrics key of another type must not stop the acknowledgements.
for t = 1, tallies do
  local class, buckets = ARGV[i], tonumber(ARGV[i + 4])
  redis.pcall('HINCRBY', minute(t), class .. '|p', ARGV[i + 1])
  if ARGV[i + 2] ~= '0' then redis.pcall('HINCRBY', minute(t), class .. '|f', ARGV[i + 2]) end
  if buckets > 0 then
    redis.pcall('HINCRBY', minute(t), class .. '|ms', ARGV[i + 3])
    local counts = {'OVERFLOW', 'SAT'}
    for b = i + 5, i + 3 + 2 * buckets, 2 do
      counts[#counts + 1] = 'INCRBY'
      counts[#counts + 1] = 'u16'
      counts[#counts + 1] = '#' .. ARGV[b]
      counts[#counts + 1] = ARGV[b + 1]
    end
    redis.pcall('BITFIELD', histogram(t), unpack(counts))
    redis.call('EXPIRE', histogram(t), ARGV[4])
  end
  redis.call('EXPIRE', minute(t), ARGV[4])
  i = i + 5 + 2 * buckets
end
local may_suspect, want, picks = ARGV[i] == '1', tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
local first, order = i + 3, i + 3 + picks
local taken, empty, touched = {}, {}, {}
local suspect = 0
if may_suspect then  -- a suspect is taken alone: the worker runs nothing beside it
  for q = 1, queues do
    local listed = redis.call('TYPE', suspects(q))['ok'] == 'list'
    local job = listed and redis.pcall('RPOPLPUSH', suspects(q), wip(q))
    if type(job) == 'string' then
      taken = {q, job}
      touched[q], suspect, want = true, 1, 0
      break
    end
  end
end
local function take(q)
  if empty[q] then return nil end
  local job = redis.pcall('RPOPLPUSH', queue(q), wip(q))  -- moves nothing if either is no list
  if type(job) == 'table' then
    problem(-q, job['err'])
    job = false
  end
  if not job then empty[q] = true end
  return job
end
for slot = 1, want do
  local q, job = nil, nil
  if slot <= picks then
    q = tonumber(ARGV[first + slot - 1])
    job = take(q)
  end
  if not job then
    for o = order, #ARGV do
      q = tonumber(ARGV[o])
      job = take(q)
      if job then break end
    end
  end
  if not job then break end
  taken[#taken + 1] = q
  taken[#taken + 1] = job
  touched[q] = true
end
for q in pairs(touched) do redis.pcall('SADD', KEYS[8], ARGV[4 + q]) end
local out = {1, #problems / 2, suspect}
for _, each in ipairs(problems) do out[#out + 1] = each end
for _, each in ipairs(taken) do out[#out + 1] = each end
return out
""".replace("__STAT_TTL__", str(STAT_TTL))


class Unit(NamedTuple):
    """One job taken from ``queue``, still in this worker's in-progress list.

    A tuple: one is made, hashed and compared for every job, and a frozen dataclass cost
    several times as much."""

    queue: str
    payload: str


Ack = tuple[Unit, Outcome]


class QueueOrder:
    """Weighted (``critical: 3, default: 1`` takes critical first 3 times in 4) or strict order."""

    def __init__(self, queues: Sequence[tuple[str, int]], strict: bool) -> None:
        self.names = [name for name, _ in queues]
        self.strict = strict
        self._pool = [name for name, weight in queues for _ in range(max(weight, 1))]

    def order(self) -> list[str]:
        if self.strict or len(self.names) == 1:
            return self.names
        pool = self._pool[:]
        random.shuffle(pool)
        return list(dict.fromkeys(pool))

    def picks(self, count: int) -> list[str]:
        """A weighted queue for each of ``count`` jobs, so that a batch keeps the proportions
        a job-at-a-time fetch would have; none in strict order."""
        if self.strict or len(self.names) == 1:
            return []
        return random.choices(self._pool, k=count)


class RoundTrip:
    """ACK_AND_FETCH for one worker: its keys, its arguments and its reply."""

    def __init__(self, conn: redis.Redis, keys: Keys, identity: str, queues: Sequence[str],
                 ttl: float, retention: int = RETENTION) -> None:
        """``queues`` are every queue the worker takes from, ``ttl`` its heartbeat TTL, which
        each call extends, ``retention`` the seconds execution metrics are kept."""
        self.keys = keys
        self.identity = identity
        self.queues = list(queues)
        self.ttl_ms = int(ttl * 1000)
        self.retention = retention
        # Sent as bytes, which redis-py passes on without encoding them again for every call.
        self._number = {name: wire(str(q)) for q, name in enumerate(self.queues, 1)}
        self._failed_number = {name: wire(f"-{q}") for q, name in enumerate(self.queues, 1)}
        self._members = [wire(f"{identity}|{name}") for name in self.queues]
        self._queue_keys = [wire(key) for name in self.queues
                            for key in (keys.queue(name), keys.wip(identity, name), keys.suspects(name))]
        self._keys: list[bytes] = []
        self._today = (0.0, 0.0)  # the UTC day that the stat keys in _keys count, from and until
        self._conn = conn
        self._script = conn.register_script(ACK_AND_FETCH)
        self.unfiled: list[tuple[Ack, str]] = []  # of the last call (see _problems)
        self.unread: dict[str, str] = {}
        self.suspect = False  # the last call took a suspect, the one job it returned

    def send(self, acks: Sequence[Ack], want: int, picks: Sequence[str], order: Sequence[str],
             tallies: Sequence[Tally] = (), may_suspect: bool = False) -> list[Unit]:
        """Acknowledge ``acks``, record ``tallies`` and take up to ``want`` jobs: the n-th from
        ``picks[n]`` if it has one, else from the first queue in ``order`` that has one; or,
        if ``may_suspect`` and a queue has a suspect, that job alone (``suspect`` says so).
        Raises Lapsed if the worker's entry had expired, having done nothing."""
        now = time.time()
        if not self._today[0] <= now < self._today[1]:
            self._new_day(now)
        number = self._number
        keys: list[bytes] = self._keys  # worked out once, for every round trip without tallies
        recorded: list[bytes | int] = []
        if tallies:
            keys, recorded = self._tallies(tallies)
        reply = evalsha(self._conn, self._script, keys, [
            now, self.ttl_ms, len(tallies), self.retention, *self._members, len(acks),
            *self._acknowledgements(acks), *recorded, b"1" if may_suspect else b"0",
            want, len(picks), *[number[name] for name in picks], *[number[name] for name in order],
        ])
        if reply[0] == 0:
            raise Lapsed(self.identity)
        names = self.queues
        self.suspect = reply[2] == 1
        start = 3 + 2 * reply[1]
        if reply[1]:
            self._problems(acks, reply[3:start])
        else:
            self.unfiled, self.unread = [], {}
        return [Unit(names[reply[i] - 1], reply[i + 1]) for i in range(start, len(reply), 2)]

    def _problems(self, acks: Sequence[Ack], problems: list[Any]) -> None:
        """File what a key of another type kept the call from doing: ``unfiled``, the failed
        jobs left in progress because their sorted set could not take them, and ``unread``, the
        queues that could not be read, with the reason."""
        self.unfiled, self.unread = [], {}
        for which, why in zip(problems[::2], problems[1::2], strict=True):
            if which > 0:
                self.unfiled.append((acks[which - 1], str(why)))
            else:
                self.unread[self.queues[-which - 1]] = str(why)

    def _acknowledgements(self, acks: Sequence[Ack]) -> list[bytes | str | float]:
        """The script's arguments for ``acks``: a job that succeeded needs its queue and payload
        alone, the common case kept short since a batch may carry hundreds."""
        number, failed_number = self._number, self._failed_number
        args: list[bytes | str | float] = []
        for unit, outcome in acks:
            if outcome.failed or outcome.action:
                args += [failed_number[unit.queue], wire(unit.payload), outcome.action, outcome.payload,
                         outcome.score, "1" if outcome.failed else "0"]
            else:
                args += [number[unit.queue], wire(unit.payload)]
        return args

    def _tallies(self, tallies: Sequence[Tally]) -> tuple[list[bytes], list[bytes | int]]:
        """The script's keys with those of ``tallies`` added, and the tallies' arguments: the
        counts, and each histogram bucket that has any."""
        keys = self._keys[:]
        args: list[bytes | int] = []
        for tally in tallies:
            minute, window = minute_names(tally.minute)
            keys.append(wire(self.keys.job_metrics(minute)))
            keys.append(wire(self.keys.job_histogram(tally.job_class, window)))
            filled = [(index, count) for index, count in enumerate(tally.buckets) if count]
            args += [wire(tally.job_class), tally.processed, tally.failed, tally.ms, len(filled)]
            for index, count in filled:
                args += [index, count]
        return keys, args

    def _new_day(self, now: float) -> None:
        """Work out the keys for the UTC day of ``now`` (a clock set back may also need it)."""
        start = now // DAY * DAY
        self._today = (start, start + DAY)
        date, keys = day(now), self.keys
        fixed = [keys.process(self.identity), keys.retry, keys.dead, keys.processed, keys.failed,
                 keys.processed_on(date), keys.failed_on(date), keys.wip_registry]
        self._keys = [wire(key) for key in fixed] + self._queue_keys

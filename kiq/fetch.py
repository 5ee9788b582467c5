"""Taking jobs from Redis into a worker, and acknowledging them, in batches.

One fetcher thread per worker process does all of the job traffic with Redis.
Each round trip is one Lua call that acknowledges the jobs finished since the
last call (removing them from the in-progress list, filing retries and dead
jobs, counting stats) and moves up to N new jobs from the queues, in weighted
or strict order, into this worker's in-progress lists. A job is therefore
always in Redis: in its queue, in an in-progress list, or in a sorted set.

When every queue is empty the fetcher goes idle, and for each queue one of the
threads waiting in ``take`` blocks in BLMOVE (BRPOPLPUSH before Redis 6.2) and
runs the job it catches itself: a job pushed to an idle worker starts at once,
without waking another thread first. The worker runs one thread per job slot
and one per queue, so that every queue has a thread to watch it while at most
``concurrency`` jobs run.

Otherwise processor threads never talk to Redis for kiq: they ``take`` a unit
from the local buffer and report it ``done``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import redis

from kiq import log
from kiq.connection import Outage, connect, keep_trying, server_version, wire
from kiq.heartbeat import Lapsed
from kiq.keys import Keys, day
from kiq.lease import Lease, Reclaimer
from kiq.recovery import Recovery
from kiq.retry import TRIM_DEAD, Outcome

# ARGV: prefix, identity, now, day, heartbeat TTL in ms, number of
# acks, then per ack (queue, payload, action, new payload, score, failed), then how
# many jobs to take, how many per-job queue picks follow, the picks, and the order
# in which to try every queue when a pick is empty. Returns {0} and does nothing if
# the worker's IDENTITY key has expired (kiq.lease), else 1, queue, payload, queue, ...
# Extending the key's TTL comes first: Redis accepts it even at maxmemory, and then
# the rest of the script.
ACK_AND_FETCH = TRIM_DEAD + """
local prefix, identity, now, today = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('PEXPIRE', prefix .. identity, ARGV[5]) == 0 then return {0} end
local wip = prefix .. 'kiq:wip:' .. identity .. '|'
local i = 7
local processed, failed, died = 0, 0, false
for _ = 1, tonumber(ARGV[6]) do
  local queue, job, action = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  -- A job no longer in progress here was requeued (a stop, a sweep): filing it in retry
  -- or dead as well would run it twice.
  local held = redis.call('LREM', wip .. queue, -1, job) == 1
  if held and action == 'retry' then
    redis.call('ZADD', prefix .. 'retry', ARGV[i + 4], ARGV[i + 3])
  elseif held and action == 'dead' then
    redis.call('ZADD', prefix .. 'dead', ARGV[i + 4], ARGV[i + 3])
    died = true
  end
  processed = processed + 1
  if ARGV[i + 5] == '1' then failed = failed + 1 end
  i = i + 6
end
local ttl = 5 * 365 * 24 * 3600
if processed > 0 then
  redis.call('INCRBY', prefix .. 'stat:processed', processed)
  redis.call('INCRBY', prefix .. 'stat:processed:' .. today, processed)
  redis.call('EXPIRE', prefix .. 'stat:processed:' .. today, ttl)
end
if failed > 0 then
  redis.call('INCRBY', prefix .. 'stat:failed', failed)
  redis.call('INCRBY', prefix .. 'stat:failed:' .. today, failed)
  redis.call('EXPIRE', prefix .. 'stat:failed:' .. today, ttl)
end
if died then trim_dead(prefix .. 'dead', now) end
local want, picks = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
local first, order = i + 2, i + 2 + picks
local out, empty, touched = {1}, {}, {}
local function take(queue)
  if empty[queue] then return nil end
  local job = redis.call('RPOPLPUSH', prefix .. 'queue:' .. queue, wip .. queue)
  if not job then empty[queue] = true end
  return job
end
for slot = 1, want do
  local queue, job = ARGV[first + slot - 1], nil
  if slot <= picks then job = take(queue) end
  if not job then
    for q = order, #ARGV do
      queue = ARGV[q]
      job = take(queue)
      if job then break end
    end
  end
  if not job then break end
  out[#out + 1] = queue
  out[#out + 1] = job
  touched[queue] = true
end
for queue in pairs(touched) do redis.call('SADD', prefix .. 'kiq:wip', identity .. '|' .. queue) end
return out
"""

BLOCK_SECONDS = 1
PREFETCH_MIN = 20
PREFETCH_MAX = 10  # times the floor
PREFETCH_WORK = 0.1  # seconds of work a worker may hold beyond its running jobs
RATE_WINDOW = 0.1  # seconds over which the job rate that sizes the prefetch is counted
ACK_MAX_AGE = 0.03
LEASE_WAIT = 0.05  # how often a thread waiting for the lease to be renewed looks again


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


def thread_count(concurrency: int, queues: int) -> int:
    """Threads a worker runs to take jobs: one per job slot, and one per queue to watch."""
    return concurrency + queues


class Unit(NamedTuple):
    """One job taken from ``queue``, still in this worker's in-progress list.

    A tuple: one is made, hashed and compared for every job, and a frozen dataclass cost
    several times as much."""

    queue: str
    payload: str


class Fetcher:
    """Owns a worker's Redis job traffic; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        identity: str,
        queues: QueueOrder,
        concurrency: int,
        ttl: float = 60.0,
        info: str = "{}",
    ) -> None:
        """``ttl`` is the heartbeat TTL that each round trip extends, ``info`` the heartbeat's
        info field, for a worker that must recreate its entry (kiq.lease)."""
        self.redis_url = redis_url
        self.keys = keys
        self.identity = identity
        self.queues = queues
        self.concurrency = concurrency
        self._prefetch_floor = max(concurrency, PREFETCH_MIN)
        self._set_prefetch(self._prefetch_floor)
        self._window_started = time.monotonic()
        self._window_acks = 0
        self.conn = connect(redis_url, name=f"kiq-fetch-{identity}")
        self.recovery = Recovery(self.conn, keys)
        self.ttl_ms = int(ttl * 1000)
        self.lease = Lease(ttl)
        self._reclaimer = Reclaimer(self.conn, keys, identity, ttl, queues.names, info)
        self._lapsed = False
        self._retry_now = threading.Event()
        self._script = self.conn.register_script(ACK_AND_FETCH)
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._wake = threading.Condition(self._lock)
        self._buffer: deque[Unit] = deque()
        self._giveback: list[Unit] = []
        self._held: dict[Unit, int] = {}  # taken from Redis, not yet acknowledged or given back
        self._resync = False
        self._acks: list[tuple[Unit, Outcome]] = []
        self._first_ack_at = 0.0
        self._running = 0
        self._fetching = True
        self._closing = False
        self._idle = False  # the last fetch found every queue empty
        self._unwatched: list[str] = []  # queues that no thread blocks on
        self._watch_conns: dict[str, redis.Redis] = {}
        self._blocking = "BLMOVE"
        self._thread = threading.Thread(target=self._run, name="fetcher", daemon=True)
        self._outage = Outage("fetch")
        self.log = log.get("kiq.fetch")

    # -- processor side -------------------------------------------------

    @property
    def threads(self) -> int:
        """How many threads should call ``take``."""
        return thread_count(self.concurrency, len(self.queues.names))

    def take(self) -> Unit | None:
        """The next job to run, waiting for one; None once the worker stops fetching.

        While the worker is idle the wait may be spent watching a queue (``_watch``);
        a job caught there is this thread's to run, unless every slot is busy.
        """
        while True:
            with self._lock:
                queue = self._wait_for_work()
                if queue is None:
                    if not self._buffer:
                        return None  # quiet: the buffer went back to Redis
                    self._running += 1
                    unit = self._buffer.popleft()
                    if self._due():
                        self._wake.notify()
                    return unit
            self._watch(queue)

    def _wait_for_work(self) -> str | None:
        """Wait until a buffered job may start or the worker stops fetching (None), or a queue
        needs a watcher (its name, now this thread's to watch). Called with the lock held."""
        while self._fetching:
            startable = self._buffer and self._running < self.concurrency
            if startable and self.lease.valid():
                return None
            if self._idle and self._unwatched and not startable:
                return self._unwatched.pop()
            self._work_ready.wait(LEASE_WAIT if startable else None)  # a job waits for the lease
        return None

    def done(self, unit: Unit, outcome: Outcome) -> None:
        """Acknowledge a job; the fetcher sends it with its next round trip.

        The fetcher is woken only when it has something new to do (the first
        pending acknowledgement starts its clock, or a round trip is now due):
        waking a thread costs more than most jobs.
        """
        with self._lock:
            self._running -= 1
            self._acknowledge(unit, outcome)

    def abandon(self, unit: Unit, outcome: Outcome) -> None:
        """Acknowledge a job that its thread is still running (its timeout failed it). That
        thread never takes again, and its slot stays taken, so that no more than
        ``concurrency`` jobs run at once."""
        with self._lock:
            self._acknowledge(unit, outcome)

    def _acknowledge(self, unit: Unit, outcome: Outcome) -> None:
        self._acks.append((unit, outcome))
        if len(self._acks) == 1:
            self._first_ack_at = time.monotonic()
            self._wake.notify()
        elif self._due():
            self._wake.notify()

    # -- lifecycle ------------------------------------------------------

    def start(self, alive: Callable[[], bool] = lambda: True) -> bool:
        """Start the threads once Redis says which blocking move it has, waiting out an outage
        while ``alive()``; False if it gave up. The in-progress lists are registered by the
        worker's heartbeat (its first beat comes before this) and by the first round trip of a
        fetcher without one: both are scripts that Redis runs even at ``maxmemory``, where a
        plain ``SADD`` is refused."""
        def wait(seconds: float) -> bool:
            time.sleep(seconds)
            return alive()

        if not keep_trying(self._learn_server, wait):
            return False
        self._outage.recovered()
        name = f"kiq-wait-{self.identity}"
        self._watch_conns = {q: connect(self.redis_url, blocking=True, name=name) for q in self.queues.names}
        self._unwatched = list(self.queues.names)
        self._thread.start()
        return True

    def _learn_server(self) -> bool:
        """Learn the blocking move Redis has; False if Redis failed."""
        try:
            self._blocking = "BLMOVE" if server_version(self.conn) >= (6, 2) else "BRPOPLPUSH"
            return True
        except redis.RedisError as error:
            self._outage.failed(error)
            return False

    def quiet(self) -> None:
        """Stop taking jobs; jobs taken but not started go back to the front of their queues."""
        with self._lock:
            self._fetching = False
            self._giveback.extend(self._buffer)
            self._buffer.clear()
            self._work_ready.notify_all()
            self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send the last acknowledgements and give-backs, then stop the fetcher. It waits for
        the threads watching queues to leave them (within ``BLOCK_SECONDS``): a job one of them
        catches now goes back too."""
        self.quiet()
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def busy(self) -> int:
        return self._running

    def renewed(self, sent_at: float) -> None:
        """Redis found this worker's entry alive in a call sent at ``sent_at`` (monotonic)."""
        with self._lock:
            if self.lease.renew(sent_at):
                self._work_ready.notify_all()

    def lapsed(self) -> None:
        """This worker's entry had expired: start nothing until the fetcher has reclaimed it."""
        with self._lock:
            self._lapsed = True
            self.lease.end()
            self._wake.notify()
        self._retry_now.set()

    # -- fetcher thread -------------------------------------------------

    def _due(self) -> bool:
        """Whether a round trip is worth making now (called with the lock held)."""
        if self._giveback or self._resync or (self._closing and self._acks) or self._lapsed:
            return True
        if self._buffer and not self.lease.valid():
            return True
        if self._acks and (self._idle or time.monotonic() - self._first_ack_at >= ACK_MAX_AGE):
            return True
        room = self.capacity - len(self._buffer) - self._running
        if self._fetching and not self._idle and room >= self.batch:
            return True
        return bool(self._acks) and len(self._buffer) < self.batch

    def _set_prefetch(self, prefetch: int) -> None:
        """Hold ``prefetch`` jobs beyond the running ones; a round trip is worth making once
        there is room for half of them (called by the fetcher thread, or before it starts)."""
        self.prefetch = prefetch
        self.capacity = self.concurrency + prefetch
        self.batch = max(1, prefetch // 2)

    def _adapt_prefetch(self, acked: int) -> None:
        """Size the prefetch to the job rate: about ``PREFETCH_WORK`` seconds of work, between
        the floor and ``PREFETCH_MAX`` times the floor.

        Short jobs get the larger batches: fewer round trips and thread wakeups per job, and
        processors that seldom find the buffer empty (measured in bench/notes.md). Slow jobs
        stay at the floor, so that a worker holds no long jobs that another worker could start.
        """
        self._window_acks += acked
        now = time.monotonic()
        if now - self._window_started < RATE_WINDOW:
            return
        rate = self._window_acks / (now - self._window_started)
        self._window_started, self._window_acks = now, 0
        floor = self._prefetch_floor
        wanted = min(PREFETCH_MAX * floor, max(floor, int(rate * PREFETCH_WORK)))
        if wanted != self.prefetch:
            with self._lock:
                self._set_prefetch(wanted)

    def _run(self) -> None:
        pause = 0.0
        while True:
            with self._lock:
                while not self._due():
                    if self._closing and not self._acks and self._watching() == 0:
                        return
                    self._wake.wait(ACK_MAX_AGE if self._acks else 0.5)
                acks, self._acks = self._acks, []
                giveback, self._giveback = self._giveback, []
                want = self.capacity - len(self._buffer) - self._running if self._fetching else 0
                order = self.queues.order() if want > 0 else []
                picks = self.queues.picks(want) if want > 0 else []
            try:
                if self._lapsed:
                    self._reclaim()
                if self._resync:
                    self._resync = False
                    self._requeue_strays()
                if giveback:
                    self.recovery.give_back(self.identity, [(u.queue, u.payload) for u in giveback])
                jobs = self._round_trip(acks, max(want, 0), picks, order)
            except Lapsed:
                with self._lock:
                    self._acks[:0] = acks
                    self._giveback[:0] = giveback
                self.lapsed()
                continue
            except Exception as error:
                if not isinstance(error, redis.RedisError):
                    self.log.exception("fetch failed unexpectedly")
                with self._lock:
                    self._acks[:0] = acks
                    self._giveback[:0] = giveback
                    self._resync = True
                pause = self._outage.failed(error, pause)
                self._retry_now.wait(pause)  # or sooner: the heartbeat found Redis back (lapsed)
                self._retry_now.clear()
                continue
            pause = self._outage.recovered()
            with self._lock:
                self._release([unit for unit, _ in acks])
                self._release(giveback)
            self._adapt_prefetch(len(acks))
            self._receive(jobs, idle=want > 0 and not jobs)

    def _hold(self, units: list[Unit]) -> None:
        """Count units that Redis now holds for this worker (called with the lock held)."""
        held = self._held
        for unit in units:
            held[unit] = held.get(unit, 0) + 1

    def _release(self, units: list[Unit]) -> None:
        """Forget units that Redis no longer holds for this worker (called with the lock held)."""
        held = self._held
        for unit in units:
            count = held.get(unit, 0) - 1
            if count > 0:
                held[unit] = count
            else:
                held.pop(unit, None)

    def _requeue_strays(self) -> None:
        """After a failed call whose effect is unknown, give back every job in this worker's
        in-progress lists that it does not hold: a reply lost with the connection may have
        moved jobs that never reached this process."""
        with self._lock:
            held = [unit for unit, count in self._held.items() for _ in range(count)]
        moved = self.recovery.requeue_strays(self.identity, [u.payload for u in held])
        if moved:
            self.log.warning("requeued jobs whose fetch reply was lost", jobs=moved)

    def _round_trip(self, acks: list[tuple[Unit, Outcome]], want: int, picks: list[str],
                    order: list[str]) -> list[Unit]:
        """Send ``acks`` and take up to ``want`` jobs; raises Lapsed if the worker's entry expired."""
        if not acks and want == 0 and self.lease.valid():
            return []
        now, sent = time.time(), time.monotonic()
        args: list[str | bytes | float | int] = [
            self.keys.prefix, self.identity, now, day(now), self.ttl_ms, len(acks)
        ]
        for unit, outcome in acks:
            args += [unit.queue, wire(unit.payload), outcome.action, outcome.payload, outcome.score,
                     "1" if outcome.failed else "0"]
        args += [want, len(picks), *picks, *order]
        flat = self._script(args=args)
        if flat[0] == 0:
            raise Lapsed(self.identity)
        self.renewed(sent)
        return [Unit(flat[i], flat[i + 1]) for i in range(1, len(flat), 2)]

    def _reclaim(self) -> None:
        """Recreate this worker's entry, and drop the jobs it holds that a sweep requeued."""
        with self._lock:
            held = dict(self._held)
        sent = time.monotonic()
        swept, kept = self._reclaimer.reclaim(held)
        with self._lock:
            self._lapsed = False
            buffered = running = 0
            for unit, count in held.items():
                lost = count - kept.get(unit, count)
                # Copies of one payload are alike: count the ones already started as lost first.
                in_buffer = self._buffer.count(unit)
                from_buffer = max(0, lost - (count - in_buffer))
                for _ in range(lost):
                    self._release([unit])
                for _ in range(from_buffer):
                    self._buffer.remove(unit)
                buffered += from_buffer
                running += lost - from_buffer
        self.renewed(sent)
        if swept:
            self.log.warning("this worker's heartbeat expired and another master requeued its jobs; "
                             "jobs not started are left to their queues, running ones may run twice",
                             dropped=buffered, running=running)
        else:
            self.log.warning("this worker's heartbeat had expired; registered again, no job was requeued")

    def _receive(self, jobs: list[Unit], idle: bool) -> None:
        with self._lock:
            self._hold(jobs)
            if not self._fetching:
                self._giveback.extend(jobs)
                return
            self._buffer.extend(jobs)
            self._work_ready.notify(min(len(jobs), self.concurrency - self._running))
            if idle:
                self._idle = True
                self._work_ready.notify(len(self._unwatched))
            elif jobs:
                self._idle = False

    def _watching(self) -> int:
        return len(self.queues.names) - len(self._unwatched)

    # -- watching a queue while idle --------------------------------------

    def _watch(self, queue: str) -> None:
        """Block on ``queue`` while the worker is idle. A job that arrives goes to the buffer,
        where this thread, back in ``take``, picks it up; the fetcher wakes to look for more.
        A thread that dies here leaves the queue to the next watcher."""
        try:
            self._watch_until_caught(queue)
        except BaseException:
            with self._lock:
                self._unwatched.append(queue)
                self._work_ready.notify()
            raise

    def _watch_until_caught(self, queue: str) -> None:
        conn = self._watch_conns[queue]
        src, dst = self.keys.queue(queue), self.keys.wip(self.identity, queue)
        pause = 0.0
        while True:
            try:
                if self._blocking == "BLMOVE":
                    job = conn.blmove(src, dst, BLOCK_SECONDS, "RIGHT", "LEFT")
                else:
                    job = conn.brpoplpush(src, dst, BLOCK_SECONDS)
                pause = self._outage.recovered()
            except redis.RedisError as error:
                job = None
                with self._lock:
                    self._resync = True
                pause = self._outage.failed(error, pause)
                time.sleep(pause)
            with self._lock:
                if job is not None:
                    self._caught(Unit(queue, str(job)))
                if job is not None or not (self._idle and self._fetching):
                    self._unwatched.append(queue)
                    if self._closing:
                        self._wake.notify()
                    return

    def _caught(self, unit: Unit) -> None:
        """File a job a watcher took from Redis (called with the lock held)."""
        self._hold([unit])
        if not self._fetching:
            self._giveback.append(unit)
        else:
            self._buffer.append(unit)
            self._idle = False
        self._wake.notify()

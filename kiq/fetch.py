"""A worker's fetcher: the jobs it holds, and the one thread that moves them to and from Redis.

Processor threads never talk to Redis for kiq: they ``take`` a job from the fetcher's buffer
and report it ``done``. The fetcher thread makes every round trip (kiq.roundtrip): one script
call that sends the acknowledgements gathered since the last one and takes as many jobs as the
worker has room for. When a round trip finds every queue empty the worker is idle, and threads
waiting in ``take`` watch the queues (kiq.watch) until a job comes. The worker runs one thread
per job slot and one per queue, so that every queue has a watcher while at most
``concurrency`` jobs run.

The processor threads, the fetcher thread and the watchers share the state here under one
lock: the buffer of jobs taken but not started (already in Redis's in-progress lists), the
count of every job Redis holds for this worker (to find strays after a lost reply, and to
reclaim after a lapse), the acknowledgements and give-backs waiting for the next round trip,
and the lease (kiq.lease), without which no job starts. Threads in ``take`` wait on
``_work_ready`` (a job to start, or a queue to watch); the fetcher thread waits on ``_wake``
(a round trip to make).

A suspect (kiq.recovery: a job that was running at several crashes, each beside other jobs) is
taken alone, by a worker that holds no job: the round trip that takes one takes nothing else,
and nothing starts beside the suspect or is fetched until it ends (a job a watcher catches
meanwhile goes back to its queue). So no job waits behind a suspect, and a suspect waits for
a worker with nothing to do: the one its supervisor starts after the crash, or an idle one,
whose watchers look for suspects between waits.

The worker's tallies of its finished jobs (kiq.execution) ride with the acknowledgements: each
job is tallied before it is acknowledged, so the round trip that sends its acknowledgement, or
an earlier one, takes its tally along, and a round trip without acknowledgements takes none.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from kiq import log
from kiq.connection import RETRY_PAUSE_MAX, Outage, close_idle, connect, keep_trying
from kiq.execution import RETENTION, Tally
from kiq.heartbeat import Lapsed
from kiq.keys import Keys
from kiq.lease import Lease, Reclaimer
from kiq.payload import enqueued_seconds, read_object
from kiq.recovery import Recovery
from kiq.retry import Outcome
from kiq.roundtrip import Ack, QueueOrder, RoundTrip, Unit
from kiq.watch import BLOCK_SECONDS, Watchers, watched

PREFETCH_CEILING = 10  # times max(concurrency, 20): the automatic prefetch's ceiling
PREFETCH_HORIZON = 0.005  # seconds: a prefetched job should start within about this
PREFETCH_STALL = 0.02  # seconds of every slot busy, no job finished or arrived: prefetched ones go back
SIZING_JOBS = 100  # the first jobs size the prefetch with their running mean, one round trip at a time
SIZING_WINDOW = 0.1  # seconds of finished jobs whose mean run time resizes it after them
LEASE_WAIT = 0.05  # how often a thread waiting for the lease to be renewed looks again
STRAYS_PATIENCE = 1.0  # seconds a resync waits, beyond BLOCK_SECONDS, for the watchers' moves under way


def _jid(payload: str) -> object:
    """The jid of a job hash, for a log line; None for a payload that is none (a suspect comes
    from a list that anything with access to Redis may write to)."""
    return read_object(payload).get("jid")


def thread_count(concurrency: int, queues: int) -> int:
    """Threads a worker runs to take jobs: one per job slot, and one per queue to watch."""
    return concurrency + watched(queues)


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
        tallies: Callable[[], list[Tally]] = list,
        retention: int = RETENTION,
        prefetch: int | None = None,
    ) -> None:
        """``ttl`` is the heartbeat TTL that each round trip extends, ``info`` the heartbeat's
        info field, for a worker that must recreate its entry (kiq.lease); ``tallies`` hands over
        the tallies of the jobs finished since it was last called, kept ``retention`` seconds.
        ``prefetch`` is how many jobs it holds beyond the running ones (None: sized from their
        run times, up to the automatic ceiling)."""
        self.identity = identity
        self.queues = queues
        self.concurrency = concurrency
        self.automatic = prefetch is None
        self.prefetch_cap = PREFETCH_CEILING * max(concurrency, 20) if prefetch is None else prefetch
        self._set_prefetch(0 if prefetch is None else prefetch)  # auto: until the first jobs have run
        self._progress = time.monotonic()  # when a job last finished or arrived
        self._window_started = time.monotonic()
        self._work_seconds = 0.0
        self._work_jobs = 0
        self._sized_by = 0  # how many finished jobs have sized the prefetch
        self.job_seconds = 0.0  # the mean run time that sized the prefetch
        self.conn = connect(redis_url, name=f"kiq-fetch-{identity}")
        self.recovery = Recovery(self.conn, keys)
        self.round_trip = RoundTrip(self.conn, keys, identity, queues.names, ttl, retention)
        self.lease = Lease(ttl)
        self._reclaimer = Reclaimer(self.conn, keys, identity, ttl, queues.names, info)
        self._lapsed = False
        self._said_lapsed = False  # "heartbeat had expired" logged, until a round trip goes through
        self._retry_now = threading.Event()
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._wake = threading.Condition(self._lock)
        self._buffer: deque[Unit] = deque()
        self._giveback: list[Unit] = []
        self._held: dict[Unit, int] = {}  # taken from Redis, not yet acknowledged or given back
        self._resync = False
        self._acks: list[Ack] = []
        self._tallies = tallies
        self._unsent: list[Tally] = []  # tallies of a round trip that failed
        self._running = 0
        self._suspect: Unit | None = None  # a suspect in the buffer, waiting to run alone
        self._alone: Unit | None = None  # a suspect running alone
        self._empty_handed = False  # no job held when the fetcher's turn began: it may take a suspect
        self._cleared: list[str] = []  # suspects that ran alone and ended: their crash counts go
        self._fetching = True
        self._closing = False
        self._idle = False  # the last fetch found every queue empty
        self._tripped = 0.0  # when the last round trip was sent (monotonic)
        self._outage = Outage("fetch")
        self._unread: dict[str, str] = {}  # queues a round trip could not read, and why
        self.watchers = Watchers(redis_url, keys, identity, queues.names, self._work_ready, self._caught,
                                 self._lost, self._suspected, self._outage)
        self._thread = threading.Thread(target=self._loop, name="fetcher", daemon=True)
        self.log = log.get("kiq.fetch")

    # -- processor side -------------------------------------------------

    @property
    def threads(self) -> int:
        """How many threads should call ``take``."""
        return thread_count(self.concurrency, len(self.queues.names))

    def take(self) -> Unit | None:
        """The next job to run, waiting for one; None once the worker stops fetching.

        While the worker is idle the wait may be spent watching a queue (kiq.watch); a job
        caught there is this thread's to run, unless every slot is busy.
        """
        while True:
            with self._lock:
                queue = self._wait_for_work()
                if queue is None:
                    if not self._buffer:
                        return None  # quiet: the buffer went back to Redis
                    self._running += 1
                    unit = self._buffer.popleft()
                    if unit is self._suspect:
                        self._suspect, self._alone = None, unit
                    if self._due():
                        self._wake.notify()
                    return unit
            self.watchers.watch(queue)

    def _wait_for_work(self) -> str | None:
        """Wait until a buffered job may start or the worker stops fetching (None), or a queue
        needs a watcher (its name, now this thread's to watch). Called with the lock held."""
        while self._fetching:
            startable = self._buffer and self._running < self.concurrency and not self._held_back()
            if startable and self.lease.valid():
                return None
            room = self._running + len(self._buffer) < self.capacity
            if self._idle and room and not startable and (queue := self.watchers.claim()) is not None:
                return queue
            self._work_ready.wait(LEASE_WAIT if startable else None)  # a job waits for the lease
        return None

    def _held_back(self) -> bool:
        """Whether a suspect keeps the buffer's next job from starting: it starts once no job
        runs, and nothing starts beside it (called with the lock held, the buffer not empty)."""
        if self._alone is not None:
            return True
        return self._suspect is not None and (self._buffer[0] is not self._suspect or self._running > 0)

    def _ended(self, unit: Unit) -> None:
        """Let the held-back jobs start, and the fetcher take more, once a suspect has run
        alone; start a waiting suspect once the last job beside it has ended (called with the
        lock held)."""
        if unit is self._alone:
            self._alone = None
            self._work_ready.notify_all()
            self._wake.notify()
        elif self._suspect is not None and self._running == 0:
            self._work_ready.notify()

    def done(self, unit: Unit, outcome: Outcome, seconds: float = 0.0) -> None:
        """Acknowledge a job; the fetcher sends it with its next round trip, at once if no
        round trip is in flight. Only the first acknowledgement since the last round trip
        wakes the fetcher: waking a thread costs more than most jobs, and while a round trip
        is in flight the fetcher looks for acknowledgements when it ends. ``seconds`` is how
        long the job ran, which sizes the prefetch."""
        with self._lock:
            self._running -= 1
            self._progress = time.monotonic()
            self._work_seconds += seconds
            self._work_jobs += 1
            if unit is self._alone:
                self._cleared.append(unit.payload)  # it ran alone without crashing its worker: not a pill
            self._ended(unit)
            self._acknowledge(unit, outcome)

    def abandon(self, unit: Unit, outcome: Outcome) -> None:
        """Acknowledge a job that its thread is still running (its timeout failed it). That
        thread never takes again, and its slot stays taken, so that no more than
        ``concurrency`` jobs run at once."""
        with self._lock:
            if unit is self._alone:  # its worker is replaced: the timeout watch says so
                self._ended(unit)
            self._acknowledge(unit, outcome)

    def _acknowledge(self, unit: Unit, outcome: Outcome) -> None:
        self._acks.append((unit, outcome))
        if len(self._acks) == 1:
            self._wake.notify()

    def prefetched(self) -> dict[str, list[Any]]:
        """Per queue, ``[jobs held but not started, enqueue time of the oldest]``: what the
        heartbeat publishes, so that queue sizes and latencies do not hide them."""
        with self._lock:
            units = list(self._buffer)
        found: dict[str, list[Any]] = {}
        for unit in units:  # oldest first: each batch came off its queue oldest first
            if unit.queue in found:
                found[unit.queue][0] += 1
            else:
                found[unit.queue] = [1, enqueued_seconds(unit.payload)]
        return found

    # -- watcher side (kiq.watch), called with the lock held -------------

    def _caught(self, unit: Unit | None) -> bool:
        """File what a watcher's wait brought (a job, or None); whether it should wait again."""
        if unit is not None:
            self._hold([unit])
            if self._fetching and not self._alone_soon():
                self._buffer.append(unit)
                self._progress = time.monotonic()
                self._idle = False
            else:
                self._giveback.append(unit)
            self._wake.notify()  # to look for more, or to give the job back
            return False
        if self._idle and self._fetching:
            return True
        if self._closing:
            self._wake.notify()  # it may be the last watcher that close() waits for
        return False

    def _suspected(self) -> None:
        """A watcher found a suspect waiting: make a round trip, which may take it."""
        if self._idle and self._fetching and not self._alone_soon():
            self._idle = False
            self._wake.notify()

    def _lost(self) -> None:
        """A watcher's wait failed: its move may have happened, the reply lost."""
        self._resync = True

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

        if not keep_trying(lambda: self.watchers.open(self.conn), wait):
            return False
        self._outage.recovered()
        self._thread.start()
        return True

    def quiet(self) -> None:
        """Stop taking jobs; jobs taken but not started go back to the front of their queues."""
        with self._lock:
            self._fetching = False
            self._giveback.extend(self._buffer)
            self._buffer.clear()
            self._suspect = None  # back to its queue with the others
            self._work_ready.notify_all()
            self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send the last acknowledgements and give-backs, then stop the fetcher. It waits for
        the threads watching queues to leave them (within ``kiq.watch.BLOCK_SECONDS``): a job
        one of them catches now goes back too."""
        self.quiet()
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def busy(self) -> int:
        return self._running

    @property
    def fetching(self) -> bool:
        """Whether the fetcher thread runs: it ends when closed, or if kiq itself fails in it."""
        return self._thread.is_alive()

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
        """Whether a round trip is worth making now (called with the lock held). Every
        acknowledgement is: a finished job whose acknowledgement waits in this process would
        run again if the process were killed. Acknowledgements still travel in batches, those
        that pile up while a round trip is in flight."""
        if self._acks or self._giveback or self._resync or self._lapsed:
            return True
        if self._buffer and not self.lease.valid():
            return True
        if self._alone_soon():
            return False  # nothing is taken while a suspect waits or runs
        room = self.capacity - len(self._buffer) - self._running
        if self._idle and self.watchers.unwatched:  # no thread waits on some queues: poll them
            return self._fetching and room > 0 and time.monotonic() - self._tripped >= BLOCK_SECONDS
        return self._fetching and not self._idle and room >= self.batch

    def _set_prefetch(self, prefetch: int) -> None:
        """Hold ``prefetch`` jobs beyond the running ones; a round trip is worth making once
        there is room for half of them (called by the fetcher thread, or before it starts)."""
        self.prefetch = prefetch
        self.capacity = self.concurrency + prefetch
        self.batch = max(1, prefetch // 2)

    def _size_prefetch(self) -> None:
        """Size the prefetch to the jobs' mean run time: as many jobs as the slots start within
        ``PREFETCH_HORIZON``, up to the cap.

        A prefetched job waits for a slot here while another worker might be free to start
        it; within a few round trips' time that costs nothing, and longer it would. So jobs
        that run for more than a few milliseconds get no prefetch (a free slot takes the next
        job in its acknowledgement's round trip, as in Sidekiq), while very short ones get
        large batches: fewer round trips and thread wakeups per job, and processors that
        seldom find the buffer empty (bench/notes.md). Until a job has run, nothing is
        prefetched; the first ``SIZING_JOBS`` size it with their running mean after each round
        trip, and then the mean of each ``SIZING_WINDOW`` moves it halfway. When the jobs turn
        long the estimate would hold their successors until one of them ends: ``_stalled``
        gives those back and starts the sizing afresh, as finding the queues empty does.
        """
        now = time.monotonic()
        if self._sized_by >= SIZING_JOBS and now - self._window_started < SIZING_WINDOW:
            return
        with self._lock:
            seconds, jobs = self._work_seconds, self._work_jobs
            self._work_seconds, self._work_jobs = 0.0, 0
            self._window_started = now
            if not jobs:
                return
            if self._sized_by < SIZING_JOBS:
                self.job_seconds = (self.job_seconds * self._sized_by + seconds) / (self._sized_by + jobs)
            else:
                self.job_seconds = (self.job_seconds + seconds / jobs) / 2
            self._sized_by += jobs
            if self.automatic:
                wanted = int(self.concurrency * PREFETCH_HORIZON / max(self.job_seconds, 1e-6))
                self._set_prefetch(min(self.prefetch_cap, wanted))

    def _resize(self) -> None:
        """Forget what the jobs so far said about run times: prefetch nothing until the next
        ones have run (called with the lock held, by the fetcher thread)."""
        self._sized_by = 0
        self.job_seconds = self._work_seconds = 0.0
        self._work_jobs = 0
        self._set_prefetch(0)

    def _stalled(self) -> bool:
        """Whether the buffer's jobs wait behind long ones: every slot busy, and no job has
        finished or arrived for ``PREFETCH_STALL``. They then go back to the front of their
        queues for a worker with a free slot, and the prefetch is sized again (called with the
        lock held, by the fetcher thread)."""
        if self._alone_soon() or not (self.automatic and self._buffer and self._running >= self.concurrency):
            return False
        if time.monotonic() - self._progress < PREFETCH_STALL:
            return False
        self._giveback.extend(self._buffer)
        self._buffer.clear()
        self._resize()
        return True

    def _loop(self) -> None:
        """The fetcher thread: a round trip whenever one is due, until the fetcher is closed
        and has nothing left to send. A failed one keeps what it was to send for the next."""
        pause = lapses = 0.0
        while (due := self._next()) is not None:
            acks, tallies, giveback, want = due
            try:
                jobs = self._exchange(acks, tallies, giveback, want)
            except Lapsed:
                self._keep(acks, tallies, giveback)
                self.lapsed()
                lapses += 1
                if lapses > 1:  # lapsed again at once (its reclaim and round trip on two servers?)
                    self._retry_now.wait(min(RETRY_PAUSE_MAX, 0.05 * 2**lapses))
                    self._retry_now.clear()
                continue
            except Exception as error:
                if not isinstance(error, redis.RedisError):
                    self.log.exception("fetch failed unexpectedly")
                self._keep(acks, tallies, giveback, resync=True)
                pause = self._outage.failed(error, pause)
                self._retry_now.wait(pause)  # or sooner: the heartbeat found Redis back (lapsed)
                self._retry_now.clear()
                continue
            pause, lapses, self._said_lapsed = self._outage.recovered(), 0, False
            with self._lock:
                self._release([unit for unit, _ in acks])
                self._release(giveback)
            self._size_prefetch()
            self._receive(jobs, idle=want > 0 and not jobs)

    def _next(self) -> tuple[list[Ack], list[Tally], list[Unit], int] | None:
        """Wait until a round trip is due; then what it sends and how many jobs it wants. None
        once closed with nothing to send and no watcher left to catch a job."""
        with self._lock:
            while not (self._stalled() or self._due()):
                if self._closing and not self._acks and self.watchers.watching == 0:
                    return None
                self._wake.wait(PREFETCH_STALL if self.automatic and self._buffer else 0.5)
            acks, self._acks = self._acks, []
            tallies: list[Tally] = []
            if acks:
                tallies, self._unsent = self._unsent + self._tallies(), []
            giveback, self._giveback = self._giveback, []
            taking = self._fetching and not self._alone_soon()
            want = self.capacity - len(self._buffer) - self._running if taking else 0
            self._empty_handed = taking and not self._buffer and self._running == 0
            return acks, tallies, giveback, max(want, 0)

    def _keep(self, acks: list[Ack], tallies: list[Tally], giveback: list[Unit],
              resync: bool = False) -> None:
        """Put back what a failed round trip was to send, ahead of what came since."""
        with self._lock:
            self._acks[:0] = acks
            self._unsent[:0] = tallies
            self._giveback[:0] = giveback
            self._resync = self._resync or resync

    def _exchange(self, acks: list[Ack], tallies: list[Tally], giveback: list[Unit], want: int) -> list[Unit]:
        """Everything one turn of the fetcher sends: a reclaim after a lapse, a resync after a
        failed call, give-backs, then the round trip (skipped when it has nothing to do)."""
        rare = self._lapsed or self._resync or giveback
        if self._cleared:
            self._clear_counts()
        if self._lapsed:
            self._reclaim()
        if self._resync:
            self._resync = False
            self._requeue_strays()
        if giveback:
            self.recovery.give_back(self.identity, [(u.queue, u.payload) for u in giveback])
        if rare:
            close_idle(self.conn)  # the round trip's connection stays this worker's only one
        if not acks and want == 0 and self.lease.valid():
            return []
        picks, order = (self.queues.picks(want), self.queues.order()) if want else ([], [])
        sent = self._tripped = time.monotonic()
        jobs = self.round_trip.send(acks, want, picks, order, tallies,
                                    may_suspect=want > 0 and self._empty_handed)
        self.renewed(sent)
        if self.round_trip.unfiled or self.round_trip.unread or self._unread:
            self._problems(jobs)
        return jobs

    def _clear_counts(self) -> None:
        """Forget the crash counts of suspects that ran alone and ended: a later crash beside
        other jobs starts their count afresh."""
        with self._lock:
            cleared, self._cleared = self._cleared, []
        self.recovery.forget(cleared)

    def _problems(self, jobs: list[Unit]) -> None:
        """Say what keys of another type (written by anything with access to Redis) kept the
        round trip from doing. A failed job that its sorted set could not take stays in this
        worker's in-progress list, held (``_loop`` releases the acknowledged ones after this),
        and goes back to its queue when the worker stops; a queue that cannot be read is said
        once, until it gives a job again."""
        for (unit, outcome), why in self.round_trip.unfiled:
            with self._lock:
                self._hold([unit])
            self.log.error("could not file a failed job; it stays in progress here and goes back to its "
                           "queue when this worker stops", into=outcome.action, jid=_jid(outcome.payload),
                           queue=unit.queue, error=why)
        for queue, why in self.round_trip.unread.items():
            if self._unread.get(queue) != why:
                self.log.error("cannot take jobs from this queue, whose key is not a list; fix or delete it",
                               queue=queue, error=why)
            self._unread[queue] = why
        for queue in {unit.queue for unit in jobs} & self._unread.keys():
            del self._unread[queue]
            self.log.info("queue readable again", queue=queue)

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
        moved jobs that never reached this process.

        An idle watcher's move may land in Redis at any moment before the watcher files its
        job: no watcher starts a wait meanwhile, and those under way end first (within
        ``BLOCK_SECONDS``), or their jobs would be given back and run here too."""
        deadline = time.monotonic() + BLOCK_SECONDS + STRAYS_PATIENCE
        with self._lock:
            self.watchers.held_back = True
        try:
            while True:
                with self._lock:
                    if not self.watchers.moving or time.monotonic() > deadline:
                        held = [unit for unit, count in self._held.items() for _ in range(count)]
                        break
                time.sleep(0.01)
            moved = self.recovery.requeue_strays(self.identity, [u.payload for u in held])
        finally:
            with self._lock:
                self.watchers.held_back = False
                self._work_ready.notify_all()
        if moved:
            self.log.warning("requeued jobs whose fetch reply was lost", jobs=moved)

    def _reclaim(self) -> None:
        """Recreate this worker's entry, and drop the jobs it holds that a sweep requeued."""
        with self._lock:
            held = dict(self._held)
        sent = time.monotonic()
        swept, restored, kept = self._reclaimer.reclaim(held)
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
            if self._suspect is not None and self._suspect not in self._buffer:
                self._suspect = None  # requeued by the sweep: it runs from its queue
        self.renewed(sent)
        if swept:
            self.log.warning("this worker's heartbeat expired and another master requeued its jobs; "
                             "jobs not started are left to their queues, running ones may run twice",
                             dropped=buffered, running=running)
        elif restored:
            self.log.warning("redis had lost the jobs this worker holds (a restart without persistence, a "
                             "flush): it put them back into its in-progress lists", jobs=restored)
        elif not self._said_lapsed:
            self.log.warning("this worker's heartbeat had expired; registered again, no job was requeued")
        self._said_lapsed = not swept and not restored

    def _receive(self, jobs: list[Unit], idle: bool) -> None:
        with self._lock:
            self._hold(jobs)
            if not self._fetching:
                self._giveback.extend(jobs)
                return
            if jobs and self.round_trip.suspect:  # the last call's: a turn that made none took no job
                self._take_alone(jobs[0])
                return
            self._buffer.extend(jobs)
            self._work_ready.notify(min(len(jobs), self.concurrency - self._running))
            if idle:
                self._idle = True
                self._work_ready.notify(len(self.watchers.free))
                if self.automatic:
                    self._resize()  # the next jobs may be of another kind
            elif jobs:
                self._progress = time.monotonic()
                self._idle = False

    def _alone_soon(self) -> bool:
        """Whether a suspect waits to run alone, or runs alone (called with the lock held)."""
        return self._suspect is not None or self._alone is not None

    def _take_alone(self, suspect: Unit) -> None:
        """Hold a suspect. It was taken with no job held, but a watcher may have brought one
        since: such jobs go back to their queues, and the suspect starts once one already
        started has ended (called with the lock held)."""
        self._giveback.extend(self._buffer)
        self._buffer.clear()
        self._buffer.append(suspect)
        self._suspect = suspect
        self._idle = False
        self._progress = time.monotonic()
        self.log.warning("running a suspect alone: it was running each time its worker died, beside "
                         "other jobs", jid=_jid(suspect.payload), queue=suspect.queue)
        self._work_ready.notify()
        self._wake.notify()  # to give the prefetched jobs back

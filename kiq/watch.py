"""The idle watchers: while every queue of a worker is empty, a thread blocks on each queue.

When a round trip finds every queue empty the worker is idle, and polling would leave a job
pushed now waiting for the next poll. Instead, for each queue (the first ``WATCH_MAX`` of
them: a blocking connection per queue per worker would take Redis's ``maxclients`` from the
apps that enqueue; the fetcher polls the others), one of the threads waiting in
``Fetcher.take`` blocks in BLMOVE (BRPOPLPUSH before Redis 6.2) on that queue's own
connection, which moves a job into the worker's in-progress list the moment it is pushed. The
watcher hands the job to the fetcher, whose buffer that same thread then takes it from: a job
pushed to an idle worker starts at once, without waking another thread first.

Every ``LOOK_SECONDS`` between waits that brought nothing, each watcher looks whether its
queue has a suspect (kiq.recovery), which no wait catches: the fetcher then makes a round
trip, which may take it if the worker holds no job. The worker a master starts after a crash
holds none: its first round trip takes one.

The watchers share the fetcher's lock. Which queues are free to watch changes together with
the fetcher's idle state: a queue freed while the worker is idle must have a thread woken to
watch it, or a job pushed there would wait until the next round trip, which an idle worker
does not make.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import redis

from kiq import log
from kiq.connection import Outage, connect, server_version, wrong_type
from kiq.keys import Keys
from kiq.roundtrip import Unit

BLOCK_SECONDS = 1
LOOK_SECONDS = 5  # how often a watcher whose waits bring nothing looks for a suspect
WATCH_MAX = 16  # queues an idle worker watches, each on a connection of its own; it polls the rest


def watched(queues: int) -> int:
    """How many of a worker's ``queues`` its idle watchers wait on, each on a connection."""
    return min(queues, WATCH_MAX)


class Watchers:
    """The watch connections of one worker, which of its queues no thread watches, and the
    wait on one queue.

    A watcher reports the end of each wait to ``caught`` (the job, or None if none came), with
    the shared lock held: the fetcher files the job and says whether to wait again. A wait
    that failed is reported to ``lost`` first (lock held too): the move may have happened, its
    reply lost with the connection. A suspect found waiting is reported to ``suspected``
    (lock held) before the end of that wait."""

    def __init__(self, redis_url: str, keys: Keys, identity: str, queues: Sequence[str],
                 ready: threading.Condition, caught: Callable[[Unit | None], bool],
                 lost: Callable[[], None], suspected: Callable[[], None], outage: Outage) -> None:
        """``ready`` is the condition, on the shared lock, that threads wait on in ``take``."""
        self.redis_url = redis_url
        self.keys = keys
        self.identity = identity
        self.queues = list(queues)[:WATCH_MAX]  # the first in the configured order
        self.unwatched = len(queues) > WATCH_MAX  # queues beyond: the idle fetcher polls them
        self.free = list(self.queues)  # queues that no thread watches (guarded by the shared lock)
        self.blocking = "BLMOVE"
        self._ready = ready
        self._caught = caught
        self._lost = lost
        self._suspected = suspected
        self._outage = outage
        self._conns: dict[str, redis.Redis] = {}
        self.moving = 0  # waits under way, whose moves may land at any moment (shared lock)
        self.held_back = False  # no wait starts while set: a resync is under way (shared lock)

    def open(self, conn: redis.Redis) -> bool:
        """Learn through ``conn`` which blocking move Redis has, then make a connection for
        each queue; False if Redis failed."""
        try:
            self.blocking = "BLMOVE" if server_version(conn) >= (6, 2) else "BRPOPLPUSH"
        except redis.RedisError as error:
            self._outage.failed(error)
            return False
        name = f"kiq-wait-{self.identity}"
        self._conns = {queue: connect(self.redis_url, blocking=True, name=name) for queue in self.queues}
        return True

    @property
    def watching(self) -> int:
        """How many queues a thread watches now."""
        return len(self.queues) - len(self.free)

    def claim(self) -> str | None:
        """A queue that no thread watches, now the caller's to watch (lock held)."""
        return self.free.pop() if self.free else None

    def watch(self, queue: str) -> None:
        """Wait on ``queue`` until a job comes or the fetcher wants no more waiting, then free
        it. A thread that dies here frees the queue too, and wakes another to take it up:
        without that, an idle worker would never take a job from that queue again."""
        try:
            self._wait(queue)
        except BaseException:
            with self._ready:
                self.free.append(queue)
                self._ready.notify()
            raise

    def _wait(self, queue: str) -> None:
        log.bind_job({})  # a processor thread watches between jobs: its lines name none of them
        conn = self._conns[queue]
        source, target = self.keys.queue(queue), self.keys.wip(self.identity, queue)
        pause = 0.0
        looked = time.monotonic()
        while True:
            with self._ready:
                while self.held_back:
                    self._ready.wait()
                self.moving += 1
            suspect = False
            try:
                job = self._move(conn, source, target)
                if job is None and time.monotonic() - looked >= LOOK_SECONDS:
                    looked = time.monotonic()
                    suspect = conn.type(self.keys.suspects(queue)) == "list"
            except BaseException as error:
                pause = self._failed(error, pause)  # no longer counted as moving
                job, ended = None, True
            else:
                pause = self._outage.recovered()
                ended = False
            with self._ready:
                if not ended:
                    self.moving -= 1  # with its job filed under the same lock: a resync sees it held
                if suspect:
                    self._suspected()
                if not self._caught(None if job is None else Unit(queue, job)):
                    self.free.append(queue)
                    return

    def _failed(self, error: BaseException, pause: float) -> float:
        """After a wait that raised, which ends its count as moving: the pause before the
        next one. A Redis error may have moved a job whose reply was lost (the fetcher
        resyncs); a queue key of another type moved nothing and is said by the round trip
        (kiq.fetch), not an outage."""
        lost = isinstance(error, redis.RedisError) and not wrong_type(error)
        with self._ready:
            self.moving -= 1
            if lost:
                self._lost()
        if not isinstance(error, redis.RedisError):
            raise error
        if not lost:
            time.sleep(BLOCK_SECONDS)
            return pause
        pause = self._outage.failed(error, pause)
        time.sleep(pause)
        return pause

    def _move(self, conn: redis.Redis, source: str, target: str) -> str | None:
        """Move a job pushed to ``source`` into ``target``; None if none came within BLOCK_SECONDS."""
        if self.blocking == "BLMOVE":
            job = conn.blmove(source, target, BLOCK_SECONDS, "RIGHT", "LEFT")
        else:
            job = conn.brpoplpush(source, target, BLOCK_SECONDS)
        return None if job is None else str(job)

"""A worker process's entry in Sidekiq's ``processes`` set, refreshed every few seconds.

It writes what Sidekiq's API and Web UI read: the ``IDENTITY`` hash (info,
busy, beat, quiet, rss, rtt_us, and kiq's own ``prefetched``) and the running jobs in ``IDENTITY:work``
(Sidekiq 7 and 8) and ``IDENTITY:workers`` (Sidekiq 6). Remote-control
signals (``TSTP``, ``TERM``) that the Web UI pushes to ``IDENTITY-signals``
come back from the same round trip.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from kiq import __version__
from kiq.keys import Keys
from kiq.payload import epoch_seconds


def identity(pid: int, nonce: str) -> str:
    """Sidekiq's ``hostname:pid:hex``; the supervisor (from the pid it forked) and the worker derive it."""
    return f"{socket.gethostname()}:{pid}:{nonce}"


def rss_kb(pid: int | None = None) -> int:
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def capsule(queues: Sequence[tuple[str, int]], strict: bool, concurrency: int) -> dict[str, Any]:
    """A process's queues as one of Sidekiq 8's ``capsules``: its threads, how it picks a queue
    (``strict`` order, or ``weighted``), and each queue's weight (0 in strict order, as Sidekiq
    writes it)."""
    return {"concurrency": concurrency, "mode": "strict" if strict else "weighted",
            "weights": {name: 0 if strict else weight for name, weight in queues}}


# KEYS: IDENTITY, IDENTITY:work, IDENTITY:workers, processes, kiq:wip, IDENTITY-signals.
# ARGV: identity, TTL in ms, "1" to create the entry (the first beat) or "0", info, busy, beat,
# quiet, rss, rtt_us, prefetched, "1" if the running jobs are those the last beat wrote (none
# follow) or "0", how many kiq:wip members follow, the members, then the running jobs as
# (thread id, JSON) pairs. Returns {0} if the entry had expired (and "0"), {2} if the running
# jobs were to be kept but their hash is gone (a restart, a flush: send them again), else {1,
# the oldest remote signal or false}.
# The TTL is extended first: a write that Redis accepts even at ``maxmemory``, after which the
# script's other writes are accepted too, so liveness never hangs on one refused write.
BEAT = """
local key, ttl = KEYS[1], tonumber(ARGV[2])
if redis.call('PEXPIRE', key, ttl) == 0 and ARGV[3] == '0' then return {0} end
local members = tonumber(ARGV[12])
if ARGV[11] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {2} end
  for w = 2, 3 do redis.call('PEXPIRE', KEYS[w], 2 * ttl) end
else
  for w = 2, 3 do
    local work = KEYS[w]
    redis.call('UNLINK', work)
    for i = 13 + members, #ARGV, 2 do redis.call('HSET', work, ARGV[i], ARGV[i + 1]) end
    if #ARGV >= 13 + members then redis.call('PEXPIRE', work, 2 * ttl) end
  end
end
-- pcall from here on: a key of another type, written by anything with access to Redis, must
-- not stop the beat (the entry's expiry, extended above, is what keeps the worker's jobs).
redis.pcall('SADD', KEYS[4], ARGV[1])
redis.pcall('HSET', key, 'info', ARGV[4], 'busy', ARGV[5], 'beat', ARGV[6], 'quiet', ARGV[7],
  'rss', ARGV[8], 'rtt_us', ARGV[9], 'prefetched', ARGV[10])
redis.call('PEXPIRE', key, ttl)
for i = 13, 12 + members do redis.pcall('SADD', KEYS[5], ARGV[i]) end
local signal = redis.pcall('RPOP', KEYS[6])
if type(signal) == 'table' then signal = false end
return {1, signal}
"""


def prefetched_by_queue(fields: Iterable[str | None]) -> dict[str, tuple[int, float | None]]:
    """Per queue, the jobs that live processes hold but have not started, and the enqueue time
    of the oldest, from their ``prefetched`` fields (as of each one's last beat). A field that
    is missing (Sidekiq's processes) or cannot be read counts nothing."""
    found: dict[str, tuple[int, float | None]] = {}
    for field in fields:
        try:
            held = json.loads(field) if field else {}
            entries = [(str(queue), int(count), epoch_seconds(oldest))
                       for queue, (count, oldest) in held.items()]
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):  # int(1e999), [[[...
            continue
        for queue, count, oldest in entries:
            total, first = found.get(queue, (0, None))
            found[queue] = (total + count, min((t for t in (first, oldest) if t is not None), default=None))
    return found


class Lapsed(Exception):
    """The process's entry had expired: it may have been swept (see kiq.lease)."""


class Heartbeat:
    """Writes one process's heartbeat; ``beat`` returns a remote signal name, if any."""

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        ident: str,
        info: Mapping[str, Any],
        running: Callable[[], Mapping[str, Mapping[str, Any]]],
        ttl: float = 60.0,
        wip: Sequence[str] = (),
        prefetched: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        """``wip`` lists this process's members of ``kiq:wip``: each beat registers them again, so
        a worker whose heartbeat lapsed and was swept is found again if it dies later.
        ``prefetched`` gives the jobs held but not started, per queue (kiq.fetch), which each
        beat writes to the ``prefetched`` field, a field Sidekiq does not read."""
        self.conn = conn
        self.identity = ident
        self.info = json.dumps({**info, "identity": ident, "version": __version__})
        self.running = running
        self.prefetched = prefetched
        self.ttl_ms = int(ttl * 1000)
        self.wip = list(wip)
        self._keys = [keys.process(ident), keys.work(ident), keys.workers(ident), keys.processes,
                      keys.wip_registry, keys.signals(ident)]
        self._script = conn.register_script(BEAT)
        self._written: list[str] = []  # the running jobs the last beat wrote, while they run
        self._encoded: dict[str, tuple[tuple[Any, ...], str]] = {}  # per thread: its job, and its JSON

    def beat(self, quiet: bool, create: bool = False) -> str | None:
        """Refresh the entry; raises Lapsed if it had expired, unless ``create`` (the first beat).

        The running jobs are kept twice the TTL: a master sweeping this process after its entry
        expired reads them to tell running jobs from prefetched ones (kiq.recovery). They are
        written when they change, and only kept alive otherwise: a job of megabytes, written
        again at every beat, held Redis for a moment each time."""
        work = self._encode(self.running())
        started = time.monotonic()
        self.conn.ping()
        rtt_us = int((time.monotonic() - started) * 1_000_000)
        head: list[Any] = [self.identity, self.ttl_ms, "1" if create else "0", self.info, len(work) // 2,
                           time.time(), "true" if quiet else "false", rss_kb(), rtt_us,
                           json.dumps(self.prefetched())]
        tail: list[Any] = [len(self.wip), *self.wip]
        kept = bool(work) and work == self._written
        self._written = []  # unknown until Redis answers
        args = [*head, "1", *tail] if kept else [*head, "0", *tail, *work]
        reply = self._script(keys=self._keys, args=args)
        if reply[0] == 2:  # the hash of the running jobs was gone
            reply = self._script(keys=self._keys, args=[*head, "0", *tail, *work])
        if reply[0] == 0:
            raise Lapsed(self.identity)
        self._written = work
        return reply[1]  # type: ignore[no-any-return]

    def _encode(self, running: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """The running jobs as (thread id, JSON) pairs, each job encoded once while it runs: a
        payload of megabytes is not encoded again at every beat (and comparing it with the last
        beat's is then a comparison of the same object)."""
        encoded: dict[str, tuple[tuple[Any, ...], str]] = {}
        work: list[str] = []
        for tid, job in running.items():
            key = tuple(job.values())
            known = self._encoded.get(tid)
            text = known[1] if known is not None and known[0] == key else json.dumps(job)
            encoded[tid] = (key, text)
            work += [tid, text]
        self._encoded = encoded
        return work

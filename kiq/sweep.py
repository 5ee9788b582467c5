"""When a master may take another process for dead, and finding lists nobody registered.

Any master requeues the jobs of processes whose heartbeat entry expired (``Recovery.sweep``).
An entry also expires while its process is alive: after a Redis outage or restart, while
this master could not reach Redis, or while Redis refused writes, every entry may have lapsed
at once. So a master sweeps only once Redis has been up, reachable from here and taking
writes, for a whole heartbeat TTL: by then every live worker has beaten again (or has
reclaimed its entry, kiq.lease), and a sweep that finds a target alive leaves it alone,
atomically, in the script.

The sweep finds in-progress lists through the ``kiq:wip`` registry, which is a cache: a list
whose member was removed while its worker lived (a sweep of a paused worker that then died
before its next beat) is out of it. So each master, at its start and then at most once an hour
across all masters, scans the keyspace for ``kiq:wip:*`` keys, a stretch per sweep, and hands
every list it finds to the sweep to judge with the registry's, as Sidekiq Pro's super_fetch
looks for orphaned private queues.
"""

from __future__ import annotations

import time

import redis

from kiq import log
from kiq.connection import Outage, info_of, scan_of
from kiq.keys import Keys
from kiq.recovery import Recovery

ORPHAN_CHECK_EVERY = 3600.0  # seconds between keyspace scans, across all masters
SCAN_COUNT = 1000
SCAN_CALLS = 10  # SCAN calls per sweep, so a large keyspace never holds up the master's loop


class Sweeper:
    def __init__(self, conn: redis.Redis, keys: Keys, recovery: Recovery, interval: float,
                 ttl: float) -> None:
        """Sweeps every ``interval`` seconds; ``ttl`` is the heartbeat TTL."""
        self.conn = conn
        self.keys = keys
        self.recovery = recovery
        self.interval = interval
        self.ttl = ttl
        self.next_sweep = 0.0
        self.reachable_since: float | None = float("-inf")  # None while this master cannot reach Redis
        self.cursor: int | None = 0  # the orphan check under way (a SCAN cursor), or None
        self.next_orphan_check = time.monotonic() + ORPHAN_CHECK_EVERY
        self.outage = Outage("recovery sweep")
        self.log = log.get("kiq.master")

    def sweep_if_due(self) -> None:
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + self.interval
        try:
            self._check_writes()
            if self._redis_up_for(now) < self.ttl:
                return
            moved = self.recovery.sweep(self._orphan_check(now))
        except redis.RedisError as error:
            self.reachable_since = None
            self.outage.failed(error)
            return
        self.outage.recovered()
        if moved:
            self.log.warning("requeued jobs of processes whose heartbeat expired", jobs=moved)

    def _check_writes(self) -> None:
        """Raise Redis's refusal of writes, if it refuses them. A Redis that answers reads but
        refuses writes (it became a replica: READONLY; too few replicas: NOREPLICAS; a failed
        save: MISCONF) keeps every worker from beating, as an outage does: the TTL counts from
        when writes come back. A DEL of a key that never exists changes nothing, and Redis
        takes it at ``maxmemory``, where heartbeats go on."""
        self.conn.delete(self.keys.access_check)

    def _redis_up_for(self, now: float) -> float:
        """Seconds for which Redis has been running and this master reaching it."""
        if self.reachable_since is None:
            self.reachable_since = now
        try:
            uptime = float(info_of(self.conn, self.keys.processes, "server")["uptime_in_seconds"])
        except redis.ResponseError:  # INFO disabled (some managed services): this master's view only
            uptime = float("inf")
        return min(uptime, now - self.reachable_since)

    def _orphan_check(self, now: float) -> list[str]:
        """A stretch of the orphan check, if one is under way or due: the in-progress lists it
        found (``identity|queue``), for this sweep to judge with the registry's. Nothing is
        written for them, so the check works when Redis refuses writes (at ``maxmemory``)."""
        if self.cursor is None and now >= self.next_orphan_check:
            self.next_orphan_check = now + ORPHAN_CHECK_EVERY
            if self._claim_orphan_check():
                self.cursor = 0
        found: list[str] = []
        match = self.keys.wip_pattern()
        for _ in range(SCAN_CALLS):
            if self.cursor is None:
                break
            cursor, keys = scan_of(self.conn, self.keys.processes, self.cursor, match, SCAN_COUNT)
            found += [self.keys.member_of_wip(str(key)) for key in keys]
            self.cursor = cursor or None
        return found

    def _claim_orphan_check(self) -> bool:
        """This hour's check across all masters, if no other master took it. A Redis that
        refuses the write (at ``maxmemory``) gives it to everyone: the check only reads."""
        try:
            return bool(self.conn.set(self.keys.orphan_check, "1", nx=True, ex=int(ORPHAN_CHECK_EVERY)))
        except redis.ResponseError:
            return True


"""A worker process's entry in Sidekiq's ``processes`` set, refreshed every few seconds.

It writes what Sidekiq's API and Web UI read: the ``IDENTITY`` hash (info,
busy, beat, quiet, rss, rtt_us) and the running jobs in ``IDENTITY:work``
(Sidekiq 7 and 8) and ``IDENTITY:workers`` (Sidekiq 6). Remote-control
signals (``TSTP``, ``TERM``) that the Web UI pushes to ``IDENTITY-signals``
come back from the same round trip.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from kiq import __version__
from kiq.keys import Keys


def identity(pid: int, nonce: str) -> str:
    """Sidekiq's ``hostname:pid:hex``; the master and the worker both derive it."""
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
    ) -> None:
        """``wip`` lists this process's members of ``kiq:wip``: each beat registers them again, so
        a worker whose heartbeat lapsed and was swept is found again if it dies later."""
        self.conn = conn
        self.keys = keys
        self.identity = ident
        self.info = json.dumps({**info, "identity": ident, "version": __version__})
        self.running = running
        self.ttl_ms = int(ttl * 1000)
        self.wip = list(wip)

    def beat(self, quiet: bool) -> str | None:
        key = self.keys.process(self.identity)
        work: dict[Any, Any] = {tid: json.dumps(job) for tid, job in self.running().items()}
        started = time.monotonic()
        self.conn.ping()
        rtt_us = int((time.monotonic() - started) * 1_000_000)
        pipe = self.conn.pipeline(transaction=True)
        for work_key in (self.keys.work(self.identity), self.keys.workers(self.identity)):
            pipe.unlink(work_key)
            if work:
                pipe.hset(work_key, mapping=work)
                pipe.pexpire(work_key, 2 * self.ttl_ms)  # for a sweep after the process key expired
        pipe.sadd(self.keys.processes, self.identity)
        pipe.hset(
            key,
            mapping={
                "info": self.info,
                "busy": len(work),
                "beat": time.time(),
                "quiet": "true" if quiet else "false",
                "rss": rss_kb(),
                "rtt_us": rtt_us,
            },
        )
        pipe.pexpire(key, self.ttl_ms)
        if self.wip:
            pipe.sadd(self.keys.wip_registry, *self.wip)
        pipe.rpop(self.keys.signals(self.identity))
        return pipe.execute()[-1]  # type: ignore[no-any-return]

    def clear(self) -> None:
        pipe = self.conn.pipeline(transaction=False)
        pipe.srem(self.keys.processes, self.identity)
        pipe.unlink(
            self.keys.process(self.identity),
            self.keys.work(self.identity),
            self.keys.workers(self.identity),
        )
        pipe.execute()

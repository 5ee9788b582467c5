"""The names of kiq's Redis keys, as Python code builds them.

The Lua scripts build the same names from the prefix they are given (kiq.fetch,
kiq.recovery, kiq.lease, kiq.heartbeat); docs/redis.md lists every key.

Without a namespace the names are Sidekiq's own (see docs/redis.md), so Ruby
Sidekiq, its API and its Web UI see kiq's data. kiq's private keys start with
``kiq:`` and are never listed in ``queues``, so Sidekiq ignores them.
"""

from __future__ import annotations

import os
import time


class Keys:
    """Key names under an optional namespace (``ns`` gives ``ns:queue:default``)."""

    @classmethod
    def using(cls, namespace: str | None) -> Keys:
        """Keys for ``namespace``, or for ``KIQ_NAMESPACE`` when it is None."""
        return cls(os.environ.get("KIQ_NAMESPACE", "") if namespace is None else namespace)

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        self.prefix = f"{namespace}:" if namespace else ""
        p = self.prefix
        self.queues = p + "queues"
        self.schedule = p + "schedule"
        self.retry = p + "retry"
        self.dead = p + "dead"
        self.processes = p + "processes"
        self.processed = p + "stat:processed"
        self.failed = p + "stat:failed"
        self.wip_registry = p + "kiq:wip"
        self.wip_prefix = p + "kiq:wip:"
        self.orphan_check = p + "kiq:orphan-check"
        self.poison = p + "kiq:poison"
        self.schedule_channel = p + "kiq:schedule-wakeup"
        self.access_check = p + "kiq:access-check"  # never exists: the master's start-up check deletes it

    def queue(self, name: str) -> str:
        return f"{self.prefix}queue:{name}"

    def process(self, identity: str) -> str:
        return self.prefix + identity

    def work(self, identity: str) -> str:
        """Running jobs of a process as Sidekiq 7 and 8 read them."""
        return f"{self.prefix}{identity}:work"

    def workers(self, identity: str) -> str:
        """Running jobs of a process as Sidekiq 6 reads them."""
        return f"{self.prefix}{identity}:workers"

    def signals(self, identity: str) -> str:
        return f"{self.prefix}{identity}-signals"

    def wip(self, identity: str, queue: str) -> str:
        """A worker's in-progress list for one queue.

        Its member in ``kiq:wip`` is ``identity|queue``; identities never
        contain ``|``, so the pair splits back unambiguously.
        """
        return f"{self.wip_prefix}{identity}|{queue}"

    def daily(self, counter: str, date: str) -> str:
        """One day's count of ``counter`` (``processed`` or ``failed``), as Sidekiq keeps it:
        ``stat:processed:2026-12-01``."""
        return f"{counter}:{date}"

    def periodic(self, name: str) -> str:
        """A periodic entry's state hash: ``last`` tick, its ``jid`` and ``enqueued_at``,
        ``schedule`` and ``since`` (when that schedule was first seen)."""
        return f"{self.prefix}kiq:periodic:{name}"

    def periodic_ticks(self, name: str) -> str:
        """Sorted set of a periodic entry's recently fired ticks (member and score = the tick).

        Entry names never contain ``:``, so this cannot clash with another entry's hash.
        """
        return f"{self.prefix}kiq:periodic:{name}:ticks"


def day(now: float | None = None) -> str:
    """The UTC date Sidekiq uses in its daily stat keys."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))

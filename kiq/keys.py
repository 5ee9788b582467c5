"""The names of kiq's Redis keys: every one is built here, for Python code and Lua scripts alike.

A Lua script never builds a key name: its caller passes every key the script touches in
``KEYS[]``, as Redis asks of scripts (and as Redis Cluster will require). Where a script's
keys depend on data (the queue a due job goes to, the lists of a process found dead), the
caller reads that data first and the script checks again, atomically, before it writes.
docs/redis.md lists every key.

Without a namespace the names are Sidekiq's own (see docs/redis.md), so Ruby
Sidekiq, its API and its Web UI see kiq's data. kiq's private keys start with
``kiq:`` and are never listed in ``queues``, so Sidekiq ignores them.
"""

from __future__ import annotations

import functools
import os
import re
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

    def processed_on(self, date: str) -> str:
        """Jobs processed on a UTC date (``day()``), as Sidekiq counts them."""
        return f"{self.processed}:{date}"

    def failed_on(self, date: str) -> str:
        return f"{self.failed}:{date}"

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

    def swept(self, identity: str) -> str:
        """The tombstone a sweep or a requeue at reap leaves for a process (kiq.lease)."""
        return f"{self.prefix}kiq:swept:{identity}"

    def suspects(self, queue: str) -> str:
        """Jobs of ``queue`` that were running at ``POISON_LIMIT`` crashes, each beside other
        jobs: the next worker to take one runs it alone (kiq.recovery)."""
        return f"{self.prefix}kiq:suspects:{queue}"

    def recoveries(self, jid: str) -> str:
        """How many times a job was requeued while running (kiq.recovery's poison pills)."""
        return f"{self.prefix}kiq:recoveries:{jid}"

    def wip(self, identity: str, queue: str) -> str:
        """A worker's in-progress list for one queue; its member in ``kiq:wip`` is ``member()``."""
        return self.wip_prefix + member(identity, queue)

    def wip_of(self, registered: str) -> str:
        """The in-progress list of a ``kiq:wip`` member."""
        return self.wip_prefix + registered

    def wip_pattern(self) -> str:
        """A SCAN pattern matching every in-progress list of this namespace, and no other's."""
        return glob_escape(self.wip_prefix) + "*"

    def cluster_queues_pattern(self) -> str:
        """A SCAN pattern matching the ``queues`` set of every queue of a Redis Cluster under this
        namespace: each queue is a shard whose namespace is its hash tag (kiq.shards), so its
        set is ``{QUEUE}:queues``."""
        return glob_escape(self.prefix) + "{*}:queues"

    def cluster_queue_of(self, key: str) -> str:
        """The queue whose ``{QUEUE}:queues`` set ``key`` is (``cluster_queues_pattern``)."""
        return key[len(self.prefix) + 1 : -len("}:queues")]

    def member_of_wip(self, key: str) -> str:
        """The ``kiq:wip`` member of an in-progress list's key."""
        return key[len(self.wip_prefix):]

    def daily(self, counter: str, date: str) -> str:
        """One day's count of ``counter`` (``processed`` or ``failed``), as Sidekiq keeps it:
        ``stat:processed:2026-12-01``."""
        return f"{counter}:{date}"

    def job_metrics(self, minute: str) -> str:
        """Sidekiq 7's execution metrics of one UTC minute (``minute_names``' first name): a hash
        of ``CLASS|p``, ``CLASS|f`` and ``CLASS|ms`` (kiq.execution)."""
        return f"{self.prefix}j|{minute}"

    def job_histogram(self, job_class: str, window: str) -> str:
        """Sidekiq 7's histogram of one class's run times in one UTC minute (``minute_names``'
        second name): ``HardJob-05-09:7``."""
        return f"{self.prefix}{job_class}-{window}"

    def task_result(self, result_id: str) -> str:
        """A Django task's result (kiq.contrib.django): a hash of its status, times, arguments,
        return value and errors, kept ``result_ttl`` after its last write."""
        return f"{self.prefix}kiq:task-result:{result_id}"

    def periodic(self, name: str) -> str:
        """A periodic entry's state hash: ``last`` tick, its ``jid`` and ``enqueued_at``,
        ``schedule`` and ``since`` (when that schedule was first seen)."""
        return f"{self.prefix}kiq:periodic:{name}"

    def periodic_ticks(self, name: str) -> str:
        """Sorted set of a periodic entry's recently fired ticks (member and score = the tick).

        Entry names never contain ``:``, so this cannot clash with another entry's hash.
        """
        return f"{self.prefix}kiq:periodic:{name}:ticks"


def glob_escape(text: str) -> str:
    """``text`` for a SCAN or ZSCAN MATCH pattern, its glob characters matching themselves."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def member(identity: str, queue: str) -> str:
    """A ``kiq:wip`` member: ``identity|queue``. Identities never contain ``|``, so the pair
    splits back unambiguously (``owner``)."""
    return f"{identity}|{queue}"


def owner(registered: str) -> tuple[str, str] | None:
    """``(identity, queue)`` of a ``kiq:wip`` member, or None for one that is none of kiq's."""
    identity, bar, queue = registered.partition("|")
    return (identity, queue) if bar else None


@functools.lru_cache(maxsize=4)  # each round trip that tallies jobs names its minute
def minute_names(minute: int) -> tuple[str, str]:
    """How Sidekiq 7's metrics keys name a UTC minute (``minute``: epoch seconds // 60): in the
    hash's name year, month and day, then hour and minute unpadded (``20261205|9:7``); in a
    histogram's only the day of the month and the hour padded (``05-09:7``)."""
    t = time.gmtime(minute * 60)
    return (f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}|{t.tm_hour}:{t.tm_min}",
            f"{t.tm_mday:02d}-{t.tm_hour:02d}:{t.tm_min}")


def day(now: float | None = None) -> str:
    """The UTC date Sidekiq uses in its daily stat keys."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))

"""Shards: queues spread over independent Redis servers, each keeping Sidekiq's own layout.

A shard is a name, a Redis URL and the queues that live on it. The first shard is the
default: every queue no shard names lives there, so a config with one Redis (``redis_url``)
is the one-shard case, named ``main``. Each shard holds the whole of Sidekiq's layout for
its queues (``queues``, ``queue:NAME``, ``schedule``, ``retry``, ``dead``, ``processes``, the
stats), so Sidekiq's Web UI pointed at one shard works on that shard.

Routing is by queue only: a job goes to the shard of its queue, so job classes need no
change, and whatever follows from the job (its schedule entry, its retries, its dead entry,
its in-progress list) stays on that shard. The config reads::

    shards:
      main: redis://10.0.0.1:6379/0          # the first: every queue not named below
      billing:
        url: redis://10.0.0.2:6379/0
        queues: [invoices, payments]

A Redis Cluster (``redis_url: redis+cluster://host:port``) is shards over one cluster: every
queue is a shard of its own, named after it, whose keys live under a namespace that is a
cluster hash tag, ``{NAME}`` (``ns:{NAME}`` under a namespace ``ns``). So a queue's list, its
in-progress lists, its ``schedule``, ``retry`` and ``dead`` sets, its ``processes`` and its
stats hash to one slot, every script's keys with them, and the queues spread over the
cluster's primaries. The shards of a cluster are not only the configured queues: a job for
any queue routes to that queue's shard, made when first asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from kiq.connection import connect, is_cluster, url_error
from kiq.errors import ConfigError
from kiq.keys import Keys

SINGLE = "main"  # the name of the one shard of a config without ``shards``
NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Shard:
    name: str
    url: str
    queues: tuple[str, ...] = ()  # the queues named for it; the default shard also has every other
    namespace: str | None = None  # its keys' own namespace (a cluster's hash tag); None: the config's

    def keys(self, namespace: str) -> Keys:
        """The names of this shard's keys: under its own namespace, else under ``namespace``."""
        return Keys(namespace if self.namespace is None else self.namespace)


class Shards:
    """Every shard in config order, and which one a queue lives on: a dict lookup per job.

    A cluster's (``cluster``) are the shards of the queues it was given; any other queue gets
    its own shard when first routed."""

    def __init__(self, shards: Sequence[Shard], cluster: tuple[str, str] | None = None) -> None:
        if not shards:
            if cluster is None:
                raise ValueError("at least one shard")
            shards = [queue_shard(*cluster, "default")]
        self.cluster = cluster  # (URL, namespace) of a Redis Cluster's queue shards, or None
        self.all = tuple(shards)
        self.default = self.all[0]
        self._routes = {queue: shard for shard in self.all for queue in shard.queues}
        self._named = {shard.name: shard for shard in self.all}

    @classmethod
    def single(cls, url: str, namespace: str = "", queues: Sequence[str] = ()) -> Shards:
        """The one Redis of ``url``; for a cluster's URL, a shard per queue of ``queues``."""
        if is_cluster(url):
            shards = [queue_shard(url, namespace, queue) for queue in dict.fromkeys(queues)]
            return cls(shards, (url, namespace))
        return cls([Shard(SINGLE, url)])

    def including(self, queues: Sequence[str]) -> Shards:
        """These shards and, on a cluster, one more for each of ``queues`` not among them."""
        if self.cluster is None:
            return self
        new = [queue for queue in dict.fromkeys(queues) if queue not in self._named]
        extra = [queue_shard(*self.cluster, queue) for queue in new]
        return Shards([*self.all, *extra], self.cluster) if extra else self

    @classmethod
    def parse(cls, value: Any) -> Shards:
        """From the config's ``shards`` mapping, or a ``Shards``; ConfigError names what is wrong."""
        return value if isinstance(value, Shards) else cls(parse(value))

    def route(self, queue: str) -> Shard:
        """The shard a queue lives on."""
        shard = self._routes.get(queue)
        if shard is None:
            if self.cluster is None:
                return self.default
            shard = self._routes[queue] = queue_shard(*self.cluster, queue)
        return shard

    def named(self, name: str) -> Shard:
        try:
            return self._named[name]
        except KeyError:
            raise ValueError(f"no shard named {name!r}: the shards are {', '.join(self._named)}") from None

    @property
    def names(self) -> list[str]:
        return [shard.name for shard in self.all]

    @property
    def sharded(self) -> bool:
        """More than one Redis, or a cluster: what the operator's commands show gains a shard column."""
        return len(self.all) > 1 or self.cluster is not None

    def servers(self) -> list[tuple[str, str]]:
        """(name, URL) of each shard: what a change of needs a restart (the routes do not; nor
        do a cluster's queue shards, which come and go with the queues)."""
        if self.cluster is not None:
            return [("cluster", self.cluster[0])]
        return [(shard.name, shard.url) for shard in self.all]

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shards) and self.all == other.all and self.cluster == other.cluster

    def __hash__(self) -> int:
        return hash((self.all, self.cluster))

    def __repr__(self) -> str:
        return f"Shards({list(self.all)!r})"


def connect_each(shards: Shards, **options: Any) -> dict[str, redis.Redis]:
    """A client for each shard by name (``connect``'s ``options``), one per Redis: a cluster's
    queue shards share one cluster client."""
    by_url: dict[str, redis.Redis] = {}
    for shard in shards:
        if shard.url not in by_url:
            by_url[shard.url] = connect(shard.url, **options)
    return {shard.name: by_url[shard.url] for shard in shards}


def queue_shard(url: str, namespace: str, queue: str) -> Shard:
    """A cluster's shard of one queue: named after it, its keys under the hash tag ``{queue}``."""
    if not queue or "{" in queue or "}" in queue:
        raise ValueError(f"a queue on a Redis Cluster needs a name without braces, not {queue!r}")
    return Shard(queue, url, (queue,), f"{namespace}:{{{queue}}}" if namespace else f"{{{queue}}}")


def parse(value: Any) -> list[Shard]:
    """``{name: URL}`` or ``{name: {url: URL, queues: [...]}}``, in order; the first is the default."""
    if not isinstance(value, Mapping) or not value:
        raise ConfigError("shards", "must be a mapping of shard names to a URL or {url, queues}")
    shards: list[Shard] = []
    seen: dict[str, str] = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError("shards", f"bad shard name {name!r}: letters, digits, _ . - only")
        url, queues = _spec(name, spec)
        for queue in queues:
            if queue in seen:
                raise ConfigError(f"shards.{name}.queues", f"queue {queue!r} is on shard {seen[queue]!r} too")
            seen[queue] = name
        shards.append(Shard(name, url, tuple(queues)))
    return shards


def _spec(name: str, spec: Any) -> tuple[str, list[str]]:
    url: Any
    queues: Any
    if isinstance(spec, str):
        url, queues = spec, []
    elif isinstance(spec, Mapping):
        unknown = set(spec) - {"url", "queues"}
        if unknown:
            raise ConfigError(f"shards.{name}.{sorted(unknown)[0]}", "unknown setting: use url and queues")
        url, queues = spec.get("url"), spec.get("queues", [])
        if isinstance(queues, str):
            queues = [part.strip() for part in queues.split(",") if part.strip()]
        if not isinstance(queues, list) or not all(isinstance(q, str) and q for q in queues):
            raise ConfigError(f"shards.{name}.queues", "must be a list of queue names")
    else:
        raise ConfigError(f"shards.{name}", "must be a Redis URL or {url: URL, queues: [...]}")
    if not isinstance(url, str):
        raise ConfigError(f"shards.{name}.url", "must be a URL such as redis://127.0.0.1:6379/0")
    if (problem := url_error(url)) is not None:
        raise ConfigError(f"shards.{name}.url", problem)
    if is_cluster(url):
        raise ConfigError(f"shards.{name}.url", "a Redis Cluster is given as redis_url alone: it makes "
                          "every queue a shard of its own")
    return url, list(queues)

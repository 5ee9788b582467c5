"""The Redis layouts ``bench/sizing.py`` measures: one Redis, two shards, a 3-primary cluster.

A layout starts its redis-servers (as processes of the benchmark's ``Procs``, stopped by pid)
and says what the harness needs to measure kiq on them: a plain connection to each server,
for its counters; where each shard's keys live (which server, under which namespace), for
``stat:processed`` and ``schedule``; the queues, spread over the servers; and how the client
(``kiq.configure``) and ``kiq start`` (its config file) reach them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.procs import Procs
from bench.redisd import ClusterNodes, RedisServer

NAMES = ("one", "shards", "cluster")
# Two shards: one queue on each. The cluster: one queue on each of its three primaries, which
# redis-cli gives slots 0-5460, 5461-10922 and 10923-16383 ({reports} 5152, {default} 5718,
# {mailers} 13500; checked at start, see Layout.spread).
SHARD_QUEUES = {"main": "default", "second": "mailers"}
CLUSTER_QUEUES = ("reports", "default", "mailers")


@dataclass
class Server:
    """One redis-server whose counters the harness reads."""

    name: str
    url: str
    conn: redis.Redis


@dataclass
class Layout:
    name: str
    title: str  # for the header of its tables
    servers: list[Server]
    queues: list[str]  # the jobs go round-robin over these, each its shard's
    stores: list[tuple[int, str]]  # each shard's server (an index in servers) and key namespace
    client: dict[str, Any]  # kiq.configure's arguments
    config: str  # kiq start's config file, beside heartbeat_ttl
    flags: list[str]  # kiq start's flags, beside the queues

    @property
    def url(self) -> str:
        """The first server's URL: where the one-Redis-only rows (the sweep) run."""
        return self.servers[0].url

    def spread(self) -> str:
        """Which queue lives on which server."""
        names: dict[int, list[str]] = {index: [] for index in range(len(self.servers))}
        for queue, (index, _) in zip(self.queues, self.stores, strict=True):
            names[index].append(queue)
        return "; ".join(f"{self.servers[index].name}: {', '.join(queues) or 'no queue'}"
                         for index, queues in names.items())


def plain(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=30)


def one(procs: Procs) -> Layout:
    server = RedisServer(procs, _home(procs, "redis"))
    server.start()
    servers = [Server("redis", server.url, plain(server.url))]
    return Layout("one", "one Redis", servers, ["default"], [(0, "")], {"redis_url": server.url}, "",
                  ["--redis-url", server.url])


def shards(procs: Procs) -> Layout:
    """Two redis-servers, a queue on each; ``kiq start`` with a ``shards:`` config."""
    servers, mapping = [], {}
    for name, queue in SHARD_QUEUES.items():
        server = RedisServer(procs, _home(procs, f"redis-{name}"))
        server.start()
        servers.append(Server(name, server.url, plain(server.url)))
        mapping[name] = {"url": server.url, "queues": [queue]}
    config = "shards:\n" + "".join(f"  {name}:\n    url: {spec['url']}\n    queues: [{spec['queues'][0]}]\n"
                                   for name, spec in mapping.items())
    return Layout("shards", "two shards", servers, list(SHARD_QUEUES.values()), [(0, ""), (1, "")],
                  {"shards": mapping}, config, [])


def cluster(procs: Procs) -> Layout:
    """Three primaries, no replicas; ``redis_url: redis+cluster://``, a queue on each primary."""
    nodes = ClusterNodes(procs, _home(procs, "cluster"))
    conns = nodes.start()
    servers = [Server(f"primary-{n + 1}", f"redis://127.0.0.1:{port}/0", conn)
               for n, (port, conn) in enumerate(zip(nodes.ports, conns, strict=True))]
    stores = [(ClusterNodes.primary_of(conns, f"{{{queue}}}:stat:processed"), f"{{{queue}}}")
              for queue in CLUSTER_QUEUES]
    return Layout("cluster", "a 3-primary Redis Cluster", servers, list(CLUSTER_QUEUES), stores,
                  {"redis_url": nodes.url}, "", ["--redis-url", nodes.url])


STARTS: dict[str, Callable[[Procs], Layout]] = {"one": one, "shards": shards, "cluster": cluster}


def _home(procs: Procs, name: str) -> Path:
    directory = procs.log_dir / name
    directory.mkdir()
    return directory

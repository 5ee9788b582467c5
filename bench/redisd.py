"""The benchmark's own redis-server on a free loopback port, keeping nothing on disk."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import redis

from bench.procs import Procs, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, procs: Procs, directory: Path) -> None:
        self.procs = procs
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> redis.Redis:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed (make bench installs it: make system-deps)")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir)]
        self.process = self.procs.spawn(argv, {"PATH": "/usr/bin:/bin"}, "redis-server")
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=10)
        wait_for(lambda: self._ping(client), timeout=10, what="redis-server answering")
        return client

    def version(self, client: redis.Redis) -> str:
        return str(client.info("server")["redis_version"])

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False


def cluster_ports(count: int) -> list[int]:
    """Free loopback ports whose cluster bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port >= 55000 or port in ports:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


class ClusterNodes:
    """A Redis Cluster of ``primaries`` redis-servers and no replicas (the cost per job is the
    primaries'), made with ``redis-cli --cluster create``; every server is one of ``procs``'
    processes, stopped by its pid with the rest."""

    def __init__(self, procs: Procs, directory: Path, primaries: int = 3) -> None:
        self.procs = procs
        self.dir = directory
        self.ports = cluster_ports(primaries)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def start(self) -> list[redis.Redis]:
        """Start the servers, join them, and wait until every one sees the cluster ``ok``;
        a plain client of each server, in port order."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not server or not cli:
            raise RuntimeError("redis-server and redis-cli are needed for the cluster layout")
        for port in self.ports:
            home = self.dir / str(port)
            home.mkdir(parents=True)
            self.procs.spawn([server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                              "--cluster-config-file", str(home / "nodes.conf"), "--save", "",
                              "--appendonly", "no", "--dir", str(home)], {"PATH": "/usr/bin:/bin"},
                             f"redis-cluster-{port}")
        nodes = [redis.Redis(port=port, decode_responses=True, socket_timeout=10) for port in self.ports]
        for node in nodes:
            wait_for(lambda node=node: RedisServer._ping(node), timeout=10, what="cluster node answering")
        self.procs.run([cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], {"PATH": "/usr/bin:/bin"}, timeout=60)
        wait_for(lambda: all(node.cluster("info").get("cluster_state") == "ok" for node in nodes),
                 timeout=30, interval=0.1, what="the cluster ok on every node")
        return nodes

    @staticmethod
    def primary_of(nodes: list[redis.Redis], key: str) -> int:
        """The index in ``nodes`` of the server that holds ``key``'s slot."""
        slot = int(nodes[0].cluster("keyslot", key))
        for index, node in enumerate(nodes):
            own = node.cluster("myid")
            for start, end, *holders in node.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and holders and holders[0][2] == own:
                    return index
        raise RuntimeError(f"no node holds slot {slot}")

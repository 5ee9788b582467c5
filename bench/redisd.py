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

"""No socket crosses a fork: supervisors and workers hold none of their parents' sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import urllib.request

import pytest
from conftest import free_port, wait_for

pytestmark = pytest.mark.slow

PARENTS = {"kiq-master", "kiq-scheduler", "kiq-metrics", "kiq-supervisor"}


def sockets(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                found.add(int(target[len("socket:["):-1]))
    return found


def tcp() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every TCP socket, from /proc/net/tcp."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                found.append((port, int(fields[2].rsplit(":", 1)[1], 16), fields[3], int(fields[9])))
    return found


def redis_clients(r, redis_port: int, pid: int) -> set[str]:
    """Names of the Redis connections whose client end ``pid`` holds."""
    held = sockets(pid)
    ports = {local for local, remote, _, inode in tcp() if remote == redis_port and inode in held}
    return {client["name"] for client in r.client_list() if int(client["addr"].rsplit(":", 1)[1]) in ports}


def test_supervisors_and_workers_hold_no_socket_of_their_parents(start_kiq, redis_server, r):
    port = free_port()
    kiq = start_kiq(processes=2, metrics={"host": "127.0.0.1", "port": port})
    kiq.wait_workers(2)
    wait_for(lambda: "serving metrics" in kiq.log())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        response.read()  # the metrics thread's Redis connection is open now
    kiq.signal(signal.SIGHUP)  # a generation forked from a master with every socket it will have
    wait_for(lambda: kiq.log().count("generation running") == 2, timeout=30)
    [supervisor] = wait_for(lambda: (g := kiq.generations()) and len(g) == 1 and g, timeout=30)
    first, second = kiq.wait_workers(2, timeout=30)
    os.kill(first, signal.SIGKILL)  # the supervisor requeues its jobs, then forks a replacement
    replacement = wait_for(lambda: [w for w in kiq.workers() if w not in (first, second)], timeout=15)[0]
    assert {"kiq-master", "kiq-scheduler", "kiq-metrics"} <= redis_clients(r, redis_server.port, kiq.pid)
    [metrics_socket] = [inode for local, _, state, inode in tcp() if local == port and state == "0A"]
    assert metrics_socket in sockets(kiq.pid)
    assert not sockets(supervisor) & sockets(kiq.pid)
    assert redis_clients(r, redis_server.port, supervisor) <= {"kiq-supervisor"}
    for worker in (second, replacement):
        assert metrics_socket not in sockets(worker)
        assert not sockets(worker) & sockets(kiq.pid)
        assert not redis_clients(r, redis_server.port, worker) & PARENTS
        assert redis_clients(r, redis_server.port, worker), "a worker talks to Redis"

"""Redis Cluster as the engine (kiq.shards, kiq.connection.Cluster): every queue is a shard of
its own, its keys under the hash tag ``{QUEUE}``, so the queues spread over the cluster's
primaries and every script stays in one slot.

Each test runs a real cluster of three primaries and three replicas on loopback ports, and
real ``kiq start`` masters. The jobs record their runs in the test's plain Redis, outside the
cluster, so that a failover cannot lose the record of a run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import werkzeug.test
from conftest import ROOT, free_port, wait_for
from redis.cluster import RedisCluster

import kiq.web
from kiq.api import ShardedAPI
from kiq.client import Client
from kiq.config import ConfigError, load
from kiq.keys import Keys
from kiq.periodic import Entry

pytestmark = pytest.mark.slow

# One queue on each primary: redis-cli gives the three primaries slots 0-5460, 5461-10922 and
# 10923-16383, and {reports}, {default} and {mailers} hash to 5152, 5718 and 13500.
QUEUES = ["reports", "default", "mailers"]
JOBS = ["require", "cluster_jobs"]


def cluster_support() -> str:
    """Why this machine cannot run a cluster, or "" if it can."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        return "redis-server and redis-cli are not installed"
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    major = int(version.split("v=")[1].split(".")[0]) if "v=" in version else 0
    if major < 5:
        return f"redis-server too old for redis-cli --cluster create: {version.strip()}"
    return ""


class ClusterServers:
    """Six redis-servers made one cluster: three primaries, each with a replica. Every server
    is stopped by its pid at the end."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ports = self._ports(6)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    @staticmethod
    def _ports(count: int) -> list[int]:
        """Free ports whose cluster bus port (port + 10000) is free too."""
        ports: list[int] = []
        while len(ports) < count:
            port = free_port()
            if port < 55000 and port not in ports:
                try:
                    import socket

                    with socket.socket() as sock:
                        sock.bind(("127.0.0.1", port + 10000))
                    ports.append(port)
                except OSError:
                    continue
        return ports

    def start(self) -> None:
        for port in self.ports:
            home = self.dir / str(port)
            home.mkdir(exist_ok=True)
            self.processes[port] = subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(home / "nodes.conf"),
                 "--cluster-node-timeout", "1000", "--save", "", "--appendonly", "yes", "--dir", str(home),
                 "--logfile", str(home / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for port in self.ports:
            wait_for(lambda port=port: self._ping(port) or self.processes[port].poll() is not None,
                     timeout=10)
            if self.processes[port].poll() is not None:  # this build refuses the cluster options
                log = self.dir / str(port) / "redis.log"
                pytest.skip("redis-server cannot run a cluster node here: "
                            + (log.read_text(errors="replace")[-300:] if log.exists() else "it exited"))
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{port}" for port in self.ports), "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_for(self.healthy, timeout=30, interval=0.1)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)

    def _ping(self, port: int) -> bool:
        try:
            return bool(self.node(port).ping())
        except redis.ConnectionError:
            return False

    def healthy(self) -> bool:
        """Every live server sees the cluster ok, three primaries each with a replica in sync."""
        try:
            live = [port for port, process in self.processes.items() if process.poll() is None]
            if any(self.node(port).cluster("info").get("cluster_state") != "ok" for port in live):
                return False
            replicas = [port for port in live if self.node(port).info("replication")["role"] == "slave"]
            return len(live) - len(replicas) == 3 and all(
                self.node(port).info("replication").get("master_link_status") == "up" for port in replicas)
        except redis.RedisError:
            return False

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.ports[0], decode_responses=True, socket_timeout=5)

    def primary_of(self, key: str) -> int:
        """The port of the primary that holds ``key``'s slot now."""
        return int(self.client().get_node_from_key(key).port)

    def replicated(self, port: int) -> bool:
        """Whether the replica of primary ``port`` has every write the primary has made so far."""
        info = self.node(port).info("replication")
        replicas = [info[key] for key in info if key.startswith("slave") and isinstance(info[key], dict)]
        written = int(info["master_repl_offset"])
        return bool(replicas) and all(int(each["offset"]) >= written for each in replicas)

    def kill(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterServers]:
    reason = cluster_support()
    if reason:
        pytest.skip(f"no Redis Cluster on this machine: {reason}")
    directory = tmp_path / "cluster"
    directory.mkdir()
    servers = ClusterServers(directory)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def recorded(redis_server: Any, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """The plain Redis the jobs record their runs in (cluster_jobs.record)."""
    monkeypatch.setenv("KIQ_RECORD_URL", redis_server.url)
    return r


def start_on(start_kiq: Any, cluster: ClusterServers, **settings: Any) -> Any:
    return start_kiq(redis_url=cluster.url, require=["cluster_jobs"], queues=QUEUES, **settings)


def ran(r: redis.Redis) -> list[str]:
    return list(r.lrange("ran", 0, -1))


def keys(queue: str) -> Keys:
    return Keys(f"{{{queue}}}")


# -- config ----------------------------------------------------------------------------------


def test_a_cluster_url_makes_every_queue_a_shard_under_its_hash_tag(tmp_path):
    config = load(None, {"redis_url": "redis+cluster://127.0.0.1:7000", "queues": ["a", "b"]})
    routes = config.routes
    assert routes.names == ["a", "b"] and routes.cluster is not None and routes.sharded
    assert config.served_shards() == ["a", "b"]
    worker = config.on_shard("b")
    assert worker.queue_names == ["b"] and worker.namespace == "{b}"
    assert Keys(worker.namespace).queue("b") == "{b}:queue:b"
    assert routes.route("never-named").keys("").retry == "{never-named}:retry"
    namespaced = load(None, {"redis_url": "redis+cluster://127.0.0.1:7000", "namespace": "app",
                             "queues": ["a"]})
    assert namespaced.on_shard("a").namespace == "app:{a}"


@pytest.mark.parametrize("settings, key", [
    ({"queues": ["a{b}"]}, "queues"),
    ({"namespace": "x{y}"}, "namespace"),
])
def test_braces_are_refused_on_a_cluster(settings, key):
    with pytest.raises(ConfigError) as error:
        load(None, {"redis_url": "redis+cluster://127.0.0.1:7000", **settings})
    assert error.value.key == key


def test_a_cluster_cannot_be_one_of_several_shards():
    with pytest.raises(ConfigError) as error:
        load(None, {"shards": {"main": "redis://127.0.0.1:1/0", "big": "redis+cluster://127.0.0.1:7000"}})
    assert error.value.key == "shards.big.url"


# -- end to end ------------------------------------------------------------------------------


def test_jobs_of_each_queue_run_once_on_the_primary_that_holds_the_queue(start_kiq, cluster, recorded):
    kiq = start_on(start_kiq, cluster)
    kiq.wait_workers(3)  # one per queue, each its own shard
    holders = {queue: cluster.primary_of(keys(queue).queue(queue)) for queue in QUEUES}
    assert len(set(holders.values())) == 3  # the queues spread over every primary
    client = Client(cluster.url)
    for queue in QUEUES:
        client.enqueue_bulk("ClusterJob", [[str(n), queue] for n in range(20)], queue=queue)
    expected = sorted(f"{queue}:{n}" for queue in QUEUES for n in range(20))
    wait_for(lambda: len(ran(recorded)) >= 60, timeout=30)
    assert sorted(ran(recorded)) == expected
    for queue, port in holders.items():  # each queue's keys live on its own primary
        node = cluster.node(port)
        wait_for(lambda node=node, queue=queue: int(node.get(keys(queue).processed) or 0) == 20)
        assert node.smembers(keys(queue).queues) == {queue}
        [worker] = node.smembers(keys(queue).processes)
        assert json.loads(node.hget(keys(queue).process(worker), "info"))["queues"] == [queue]


def test_scheduled_jobs_and_retries_run_on_their_queues_primary(start_kiq, cluster, recorded):
    kiq = start_on(start_kiq, cluster)
    kiq.wait_workers(3)
    client = Client(cluster.url)
    client.enqueue("ClusterJob", ["later", "mailers"], queue="mailers", at=time.time() + 0.5)
    client.enqueue("ClusterFailJob", ["f1"], queue="reports")
    reports = cluster.node(cluster.primary_of(keys("reports").retry))
    wait_for(lambda: reports.zcard(keys("reports").retry) == 1, timeout=20)
    due = {"class": "ClusterJob", "args": ["retried", "default"], "jid": "c" * 24, "queue": "default",
           "retry": 3, "retry_count": 0, "error_class": "ValueError", "error_message": "once",
           "failed_at": time.time()}
    cluster.client().zadd(keys("default").retry, {json.dumps(due): time.time() - 1})
    wait_for(lambda: {"mailers:later", "default:retried"} <= set(ran(recorded)), timeout=20)
    assert recorded.lrange("attempts", 0, -1) == ["f1"]
    assert int(reports.get(keys("reports").failed) or 0) == 1


def test_stats_queues_and_the_api_show_every_queue_of_the_cluster(start_kiq, cluster, recorded, tmp_path):
    client = Client(cluster.url)
    for queue in [*QUEUES, "unconfigured"]:
        client.enqueue_bulk("ClusterJob", [["x", queue]] * 3, queue=queue)
    cluster.client().sadd("{a}b}:queues", "a}b")  # not kiq's: no queue name holds a brace
    api = ShardedAPI(shards=None, namespace="", redis_url=cluster.url)
    sizes = {summary.name: summary.size for summary in api.queue_summaries()}
    assert sizes == {"reports": 3, "default": 3, "mailers": 3, "unconfigured": 3}
    assert api.total().enqueued == 12
    config = tmp_path / "cluster.yml"
    config.write_text(f"redis_url: {cluster.url}\nqueues: [{', '.join(QUEUES)}]\n")
    shown = json.loads(kiq_command("queues", "-c", str(config), "--json"))
    assert {row["queue"]: row["size"] for row in shown} == sizes
    assert {row["shard"] for row in shown} == set(sizes)  # each queue its own shard
    stats = json.loads(kiq_command("stats", "-c", str(config), "--json"))
    assert stats["enqueued"] == 12 and stats["shards"]["unconfigured"]["enqueued"] == 3
    dashboard = werkzeug.test.Client(kiq.web.app(cluster.url, ""))
    page = dashboard.get("/queues", headers={"Host": "127.0.0.1"})
    assert page.status_code == 200 and all(queue.encode() in page.data for queue in sizes)


def kiq_command(*args: str) -> str:
    """The output of a ``kiq`` command, run as the operator runs it."""
    return subprocess.run([sys.executable, "-m", "kiq", *args], capture_output=True, text=True, check=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
                          timeout=60).stdout


def test_kiq_periodic_reads_each_entry_on_the_shard_of_its_queue(start_kiq, cluster, recorded, tmp_path):
    """The master keeps an entry's state on its queue's shard, under that queue's hash tag; a
    queue that no job has reached yet (not in ``queues`` either) is a shard as well."""
    entries = [{"name": "often", "cron": "* * * * * *", "class": "ClusterJob", "queue": "reports",
                "args": ["tick", "reports"]},
               {"name": "yearly", "cron": "0 0 1 1 *", "class": "ClusterJob", "queue": "archive",
                "args": ["new-year", "archive"]}]
    start_on(start_kiq, cluster, periodic=entries)
    wait_for(lambda: "reports:tick" in ran(recorded), timeout=30)
    config = tmp_path / "periodic.yml"
    config.write_text(json.dumps({"redis_url": cluster.url, "queues": QUEUES, "require": ["cluster_jobs"],
                                  "periodic": entries}))  # JSON is YAML
    shown = {row["name"]: row for row in json.loads(kiq_command("periodic", "-c", str(config), "--json"))}
    assert (shown["often"]["shard"], shown["yearly"]["shard"]) == ("reports", "archive")
    assert shown["often"]["last"] is not None and shown["yearly"]["last"] is None
    from test_web import cells, done, page, post

    declared = [Entry(each["name"], each["cron"], each["class"], queue=each["queue"]) for each in entries]
    dashboard = werkzeug.test.Client(kiq.web.app(cluster.url, "", periodic=declared))
    rows = cells(page(dashboard, "/periodic"), "periodic")
    assert sorted((row[0], row[1]) for row in rows) == [("archive", "yearly"), ("reports", "often")]
    done(post(dashboard, "/periodic", {"name": "yearly"}), "/periodic?done=enqueue&count=1")
    assert cluster.client().llen(keys("archive").queue("archive")) == 1


def test_killing_a_primary_mid_run_loses_no_job(start_kiq, cluster, recorded):
    """SIGKILL the primary of one queue while its jobs run: its replica takes over within the
    cluster's node timeout, and every job runs. A job whose start or acknowledgement had not
    reached the replica yet runs again; only losses count."""
    kiq = start_on(start_kiq, cluster)
    kiq.wait_workers(3)
    client = Client(cluster.url)
    for queue in QUEUES:
        client.enqueue_bulk("ClusterJob", [[str(n), queue, 0.05] for n in range(200)], queue=queue)
    victim = cluster.primary_of(keys("default").queue("default"))
    wait_for(lambda: cluster.replicated(victim), timeout=10)  # what the client was told is stored, is
    wait_for(lambda: len([each for each in ran(recorded) if each.startswith("default:")]) >= 40, timeout=30)
    cluster.kill(victim)
    wait_for(lambda: cluster.primary_of(keys("default").queue("default")) != victim, timeout=30, interval=0.2)
    wait_for(cluster.healthy, timeout=30, interval=0.2)
    for queue in QUEUES:  # the client follows the new primary
        client.enqueue_bulk("ClusterJob", [[f"after{n}", queue] for n in range(20)], queue=queue)
    expected = {f"{queue}:{n}" for queue in QUEUES for n in [*range(200), *(f"after{n}" for n in range(20))]}
    wait_for(lambda: expected <= set(ran(recorded)), timeout=90, interval=0.2)
    assert set(ran(recorded)) == expected


def test_a_slot_redirected_without_end_is_an_outage_not_a_reply(cluster):
    """A slot marked MIGRATING to a node that does not import it sends ASK there and MOVED back
    until redis-py gives up (TTL exhausted): a ClusterError that its pipeline returns as a reply.
    send() raises it as an outage (ClusterUnavailable), which kiq's loops wait out; fetch took the
    reply for the script's and failed with a TypeError and a traceback."""
    from kiq.connection import ClusterUnavailable, connect, send

    key = "{moving}:queue"
    source = cluster.primary_of(key)
    target = next(port for port in cluster.ports[:6] if port != source
                  and cluster.node(port).info("replication")["role"] == "master")
    slot = cluster.client().keyslot(key)
    target_id = cluster.node(target).cluster("myid")
    cluster.node(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    client = connect(cluster.url)
    try:
        with pytest.raises(ClusterUnavailable):
            send(client, [("LLEN", key)])
    finally:
        cluster.node(source).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert send(client, [("LLEN", key)]) == [0]

"""The master's /metrics endpoint: every process's samples plus values read from Redis.

Each scrape builds a fresh registry from the multiprocess samples directory
and one collector that reads queue sizes, latencies and set sizes from Redis,
so values that Redis already knows are computed once, in the master, when
asked for. A Redis (a shard's) that cannot be read leaves its figures out and
says so in ``kiq_redis_up``; the processes' counters and every other shard's
figures are still served.

Each connection gets its own thread and a socket timeout, as prometheus_client's
own server does threads: a client that connects and sends nothing, or half a
request, holds only its thread, and only until the timeout. A scrape reads Redis
through its own clients, which no forked child uses, so it needs no fork lock
(the scheduler takes that lock for every round: a slow scrape held it up); it
takes the lock only to copy the mapping of shards, which a reload may change.

A queue is three series, and anything that writes to Redis can add queue names:
at most QUEUES_MAX queues per shard are exported, by name, and ``kiq_queues``
says how many there are. A name that is not UTF-8 cannot be a label value and
is left out.

A port that cannot be bound (another program holds it) is tried again in the
background until it can.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any, TextIO, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.core import GaugeMetricFamily

from kiq import log, metrics
from kiq.connection import members
from kiq.heartbeat import prefetched_by_queue
from kiq.keys import Keys
from kiq.metrics import ENV
from kiq.payload import waited

REQUEST_TIMEOUT = 10.0  # seconds a connection may stay silent, reading or writing
QUEUES_MAX = 1000  # queues per shard with series of their own
OWNED_FILE = re.compile(r"(counter|histogram|gauge_live[a-z]*)_(\d+)\.db")  # a process's own samples
BIND_PAUSE_MAX = 5.0


class RedisCollector:
    """Values read from Redis at scrape time, in the master only: each shard's, under its
    ``shard`` label (``main`` with one Redis)."""

    def __init__(self, conns: Mapping[str, tuple[redis.Redis, Keys]]) -> None:
        """``conns``: each shard's Redis and key names, by shard name (a Redis Cluster's queue
        shards each have their own key names)."""
        self.conns = conns

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_queue, by_shard = ["queue", "shard"], ["shard"]
        families = {
            "size": GaugeMetricFamily("kiq_queue_size", "Jobs waiting in a queue.", labels=by_queue),
            "prefetched": GaugeMetricFamily("kiq_queue_prefetched",
                                            "Jobs of a queue that workers hold but have not started.",
                                            labels=by_queue),
            "suspects": GaugeMetricFamily("kiq_queue_suspects",
                                          "Jobs of a queue waiting to run alone: they were running at worker "
                                          "crashes shared with other jobs.", labels=by_queue),
            "latency": GaugeMetricFamily("kiq_queue_latency_seconds",
                                         "Age of the oldest job of a queue not yet started, waiting in the "
                                         "queue or prefetched.", labels=by_queue),
            "scheduled": GaugeMetricFamily("kiq_scheduled_jobs", "Jobs in the schedule set.",
                                           labels=by_shard),
            "retries": GaugeMetricFamily("kiq_retry_jobs", "Jobs in the retry set.", labels=by_shard),
            "dead": GaugeMetricFamily("kiq_dead_jobs", "Jobs in the dead set.", labels=by_shard),
            "queues": GaugeMetricFamily("kiq_queues", f"Queue names in Redis; the first {QUEUES_MAX} "
                                        "by name have series of their own.", labels=by_shard),
            "processes": GaugeMetricFamily("kiq_processes", "Worker processes with a live heartbeat, on "
                                           "every host.", labels=by_shard),
            "rtt": GaugeMetricFamily("kiq_redis_rtt_seconds", "Round trip of one Redis command from the "
                                     "master.", labels=by_shard),
            "up": GaugeMetricFamily("kiq_redis_up", "1 if the master read this shard's Redis at this scrape; "
                                    "0 if it could not, and its figures are left out.", labels=by_shard),
        }
        for shard, (conn, keys) in self.conns.items():
            try:
                self._read(shard, conn, keys, families)
            except redis.RedisError:
                families["up"].add_metric([shard], 0)
            else:
                families["up"].add_metric([shard], 1)
        yield from families.values()

    def _read(self, shard: str, conn: redis.Redis, k: Keys, families: dict[str, GaugeMetricFamily]) -> None:
        """One shard's figures. A key of another type (written by anything with access to Redis)
        leaves out the figures it holds, not the shard's."""
        named = members(conn, k.queues) or []
        families["queues"].add_metric([shard], len(named))
        queues = sorted(name for name in named if _label(name))[:QUEUES_MAX]
        identities = members(conn, k.processes) or []
        started = time.perf_counter()
        conn.ping()
        rtt = time.perf_counter() - started
        pipe = conn.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(k.queue(queue))
            pipe.lindex(k.queue(queue), -1)
            pipe.llen(k.suspects(queue))
        for key in (k.schedule, k.retry, k.dead):
            pipe.zcard(key)
        pipe.scard(k.processes)
        for ident in identities:
            pipe.hget(k.process(ident), "prefetched")
        replies = pipe.execute(raise_on_error=False)
        held = prefetched_by_queue(replies[3 * len(queues) + 4:])
        now = time.time()
        for index, queue in enumerate(queues):
            size, oldest, suspects = replies[3 * index: 3 * index + 3]
            if isinstance(size, redis.ResponseError):
                continue
            count, first = held.get(queue, (0, None))
            families["size"].add_metric([queue, shard], size)
            families["prefetched"].add_metric([queue, shard], count)
            if not isinstance(suspects, redis.ResponseError):
                families["suspects"].add_metric([queue, shard], suspects)
            families["latency"].add_metric([queue, shard], waited(oldest, first, now))
        sets = replies[3 * len(queues): 3 * len(queues) + 4]
        for name, value in zip(("scheduled", "retries", "dead", "processes"), sets, strict=True):
            if not isinstance(value, redis.ResponseError):
                families[name].add_metric([shard], value)
        families["rtt"].add_metric([shard], rtt)


def _label(text: str) -> bool:
    """Whether ``text`` can be a label value: a name read with surrogateescape (not UTF-8)
    cannot be written out."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Samples:
    """Every process's samples, added up as prometheus_client's MultiProcessCollector does,
    leaving out empty files.

    prometheus_client creates a process's file before it sizes it
    (prometheus/client_python#1199). A scrape in that moment would fail as a
    whole, and so would every later one if the process was killed in it, since
    nothing removes the empty file of a dead process.

    A process that no longer exists is dealt with here too: its reaper drops its live gauges
    and archives its counts (kiq.metrics.mark_dead), but workers whose supervisor was killed are
    reaped by no kiq process: their gauges would count for as long as the master runs, and their
    files would be read by every scrape. After the scrape that counted them, they are archived.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Any:
        with metrics.folder_lock(self.path, fcntl.LOCK_SH):  # no dead process half archived
            merged, gone = self._merge()
        for pid in gone:
            metrics.mark_dead(pid, self.path)
        return merged

    def _merge(self) -> tuple[Any, set[int]]:
        """The merged samples, and the processes whose files are there but which are gone."""
        files, gone = [], set()
        for name in glob.glob(os.path.join(self.path, "*.db")):
            owner = OWNED_FILE.fullmatch(os.path.basename(name))
            if owner and not _exists(int(owner[2])):
                gone.add(int(owner[2]))
                if owner[1].startswith("gauge_live"):
                    continue  # a live gauge of a process that is gone counts nothing
            try:
                if os.path.getsize(name) > 0:
                    files.append(name)
            except OSError:  # removed since the glob: archived by a reaper
                continue
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True), gone  # type: ignore[no-untyped-call]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user has the number now
        return True
    return True


class Scrape:
    """A collector that builds a fresh registry for each scrape, as multiprocess mode requires."""

    def __init__(self, conns: Mapping[str, tuple[redis.Redis, Keys]], lock: threading.Lock) -> None:
        self.conns = conns
        self.lock = lock
        self.samples = Samples(os.environ[ENV])

    def collect(self) -> Iterator[Any]:
        with self.lock:
            conns = dict(self.conns)
        registry = CollectorRegistry()
        registry.register(self.samples)
        registry.register(RedisCollector(conns))
        yield from registry.collect()

    def restricted_registry(self, names: Iterable[str]) -> Only:
        """What prometheus_client's WSGI app asks of its registry for ``?name[]=``."""
        return Only(self, set(names))


class Only:
    """A scrape of only the samples named (``/metrics?name[]=kiq_threads``), as
    prometheus_client's restricted registry gives them."""

    def __init__(self, scrape: Scrape, names: set[str]) -> None:
        self.scrape = scrape
        self.names = names

    def collect(self) -> Iterator[Any]:
        for family in self.scrape.collect():
            family.samples = [sample for sample in family.samples if sample.name in self.names]
            if family.samples:
                yield family


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""

    def get_stderr(self) -> TextIO:
        """A failed scrape's traceback goes out through the log's stream, under its lock."""
        return cast(TextIO, log.stream)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or hung up: its own business, not worth a traceback."""
        log.get("kiq.metrics").debug("metrics connection ended early", client=client_address[0],
                                     error=repr(sys.exc_info()[1]))


def serve(host: str, port: int, conns: Mapping[str, tuple[redis.Redis, Keys]], lock: threading.Lock) -> None:
    """Serve /metrics from a daemon thread, binding the port as soon as it is free; ``conns``
    are each shard's Redis and key names, by name; ``lock`` keeps a scrape and a fork apart."""
    app = make_wsgi_app(Scrape(conns, lock))
    threading.Thread(target=_bind_and_serve, args=(host, port, app), name="metrics", daemon=True).start()


def _bind_and_serve(host: str, port: int, app: Callable[..., Any]) -> None:
    logger = log.get("kiq.metrics")
    pause = 0.0
    while True:
        try:
            server = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
        except OSError as error:
            if not pause:
                logger.error("cannot serve metrics yet, retrying", host=host, port=port, error=str(error))
            pause = min(BIND_PAUSE_MAX, max(0.5, pause * 2))
            time.sleep(pause)
            continue
        logger.info("serving metrics", url=f"http://{host}:{port}/metrics")
        server.serve_forever()

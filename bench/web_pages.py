"""``bench/web_pages.py``: how long the dashboard's pages take on a large Redis (``make bench-web``).

Starts a private redis-server and fills it: ``--retries`` retries (100,000 by default), ``--dead``
dead jobs (Sidekiq keeps at most 10,000), ``--queued`` jobs over ``--queues`` queues, and
``--processes`` live processes (50), each running ``--running`` jobs, written by kiq's own
heartbeat code. Then serves the dashboard with ``kiq web`` (waitress, as it is deployed) and
times ``--requests`` GETs of each page, one at a time over one keep-alive connection, after a
few unmeasured ones: the time from sending the request to the last byte of the page. Prints
the median and p95 of each page against the target of 200 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable instead of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import redis

from bench.measure import percentile
from bench.procs import Procs, wait_for
from bench.redisd import RedisServer, free_port
from kiq.client import build_payload
from kiq.heartbeat import Heartbeat
from kiq.keys import Keys

TARGET_MS = 200.0
PER_PAGE = 25  # the dashboard's default
BATCH = 2000
ERROR = "Net::ReadTimeout: upstream did not answer within 30 s (GET /v2/invoices/{n}/pdf)"


def failed(n: int, queue: str, at: float) -> str:
    """A retry or dead entry as kiq's retry writes it: the job, its error and its tries."""
    payload = build_payload("Billing::InvoicePdfJob", [n, {"format": "pdf", "locale": "en"}], queue=queue,
                            jid=f"{n:024x}")
    payload.update(error_class="Net::ReadTimeout", error_message=ERROR.format(n=n), failed_at=at - 3600,
                   retried_at=at - 60, retry_count=n % 25)
    return json.dumps(payload, separators=(",", ":"))


def fill_set(conn: redis.Redis, key: str, count: int, start: float) -> None:
    pipe = conn.pipeline(transaction=False)
    for first in range(0, count, BATCH):
        batch = range(first, min(count, first + BATCH))
        pipe.zadd(key, {failed(n, f"q{n % 10}", start + n): start + n for n in batch})
        pipe.execute()


def fill_queues(conn: redis.Redis, keys: Keys, queued: int, queues: int) -> None:
    pipe = conn.pipeline(transaction=False)
    for q in range(queues):
        pipe.sadd(keys.queues, f"q{q}")
        jobs = [json.dumps(build_payload("ReportJob", [n, "daily"], queue=f"q{q}"), separators=(",", ":"))
                for n in range(queued // queues)]
        for first in range(0, len(jobs), BATCH):
            pipe.lpush(keys.queue(f"q{q}"), *jobs[first:first + BATCH])
        pipe.execute()


def fill_processes(conn: redis.Redis, keys: Keys, processes: int, running: int) -> None:
    """Live processes with running jobs, as kiq's workers' heartbeats leave them."""
    for p in range(processes):
        identity = f"web-{p // 4}:{1000 + p}:{p:04x}"
        info = {"hostname": identity.split(":")[0], "started_at": time.time() - 3600, "pid": 1000 + p,
                "tag": "shop", "concurrency": 10, "queues": [f"q{q}" for q in range(10)], "labels": []}
        work = {f"tid-{t}": {"queue": "q0", "run_at": time.time() - t,
                             "payload": json.dumps(build_payload("ReportJob", [p, t], queue="q0"))}
                for t in range(running)}
        Heartbeat(conn, keys, identity, info, lambda work=work: work, ttl=3600).beat(False, create=True)


def fill(url: str, args: argparse.Namespace) -> None:
    conn = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys()
    start = time.time() + 60
    fill_set(conn, keys.retry, args.retries, start)
    fill_set(conn, keys.dead, args.dead, start - 30 * 86400)
    fill_queues(conn, keys, args.queued, args.queues)
    fill_processes(conn, keys, args.processes, args.running)
    conn.mset({keys.processed: 123_456_789, keys.failed: 1_234_567})


def pages(retries: int) -> list[tuple[str, str, bool]]:
    """(name, path, held to the target): a filter matching one entry reads the whole set, 1,000 at
    a time (docs/web.md), so it is timed but not held to the target."""
    last = max(1, -(-retries // PER_PAGE))
    middle = (last + 1) // 2
    return [("Dashboard", "/", True), ("Busy", "/busy", True), ("Queues", "/queues", True),
            ("Retries, first page", "/retries", True),
            (f"Retries, page {middle:,}", f"/retries?page={middle}", True),
            (f"Retries, last page ({last:,})", f"/retries?page={last}", True),
            ("Retries, 250 a page", f"/retries?per=250&page={max(1, retries // 500)}", True),
            ("Dead", "/dead", True), ("A queue", "/queues/q0", True),
            ("Retries, a filter matching one job", f"/retries?q={retries // 2:024x}", False)]


def time_page(conn: http.client.HTTPConnection, path: str, requests: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``requests`` GETs of ``path``, after ``warmup`` unmeasured ones."""
    times = []
    for n in range(warmup + requests):
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200 or b"<main>" not in body:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        if n >= warmup:
            times.append(elapsed)
    return times


def serve(procs: Procs, url: str) -> int:
    """``kiq web`` on a free port; the port once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "kiq", "web", "--redis-url", url, "--port", str(port), "--threads", "4"]
    web = procs.spawn(command, {"PATH": "/usr/bin:/bin"}, "kiq-web")

    def answers() -> bool:
        if web.poll() is not None:
            raise RuntimeError(f"kiq web exited {web.returncode}: see {procs.log_dir}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(answers, timeout=30, what="kiq web answering")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/web_pages.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retries", type=int, default=100_000)
    parser.add_argument("--dead", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=100_000, help="jobs, spread over --queues queues")
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--running", type=int, default=10, help="running jobs per process")
    parser.add_argument("--requests", type=int, default=100, help="timed GETs per page")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    procs = Procs(Path(tempfile.mkdtemp(prefix="kiq-web-pages-")))
    rows: list[tuple[str, float, float, bool]] = []
    try:
        server = RedisServer(procs, procs.log_dir)
        server.start()
        filled = time.perf_counter()
        fill(server.url, args)
        print(f"filled Redis in {time.perf_counter() - filled:.1f} s: {args.retries:,} retries, "
              f"{args.dead:,} dead, {args.queued:,} queued in {args.queues} queues, {args.processes} "
              f"processes running {args.running} jobs each", file=sys.stderr)
        conn = http.client.HTTPConnection("127.0.0.1", serve(procs, server.url), timeout=30)
        for name, path, targeted in pages(args.retries):
            count, warmup = (args.requests, args.warmup) if targeted else (max(1, args.requests // 10), 1)
            times = time_page(conn, path, count, warmup)
            rows.append((name, percentile(times, 50), percentile(times, 95), targeted))
    finally:
        procs.stop_all()
    print(table(rows, args.requests))
    return 0 if all(p95 < TARGET_MS for _, _, p95, targeted in rows if targeted) else 1


def table(rows: list[tuple[str, float, float, bool]], requests: int) -> str:
    lines = [f"| page ({requests} requests each) | median ms | p95 ms | p95 under {TARGET_MS:.0f} ms |",
             "|---|---:|---:|---|"]
    for name, median, p95, targeted in rows:
        met = "yes" if p95 < TARGET_MS else "NO"
        if not targeted:
            met = f"not held to it ({max(1, requests // 10)} requests)"
        lines.append(f"| {name} | {median:.1f} | {p95:.1f} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

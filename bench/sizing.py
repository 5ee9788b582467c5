"""``make bench-sizing``: what kiq's command pattern costs Redis, per job and per idle second.

Starts private redis-servers on free loopback ports and ``kiq start`` on jobs whose bodies
touch no Redis (``bench/sizing_jobs.py``), so every command counted is kiq's, on each layout
of ``--layout`` (``bench/sizing_layouts.py``; a full run: all three in turn, ``--quick``: one):

- ``one``: one Redis, one queue, 2 worker processes x 10 threads;
- ``shards``: two Redis servers, a queue on each (``shards:`` in kiq's config), a worker
  process (x 10 threads) per shard;
- ``cluster``: a Redis Cluster of three primaries and no replicas (``redis+cluster://``), a
  queue on each primary, a worker process per queue.

The jobs of every row take turns over the layout's queues. Each row is one window between two
readings of the counters of every server of the layout, summed, and kept per server too (with
the busiest server's share: how evenly the load spreads): ``CONFIG RESETSTAT`` at its start,
then ``INFO commandstats``, ``INFO stats`` (bytes) and ``INFO cpu`` (redis-server's user +
system CPU, read at both ends) at its end. The harness's own calls in a window (the reset, the
first ``INFO``, its polls of ``stat:processed``) are taken out of the counts by name; their
CPU, a few dozen calls against thousands of jobs, stays in. The rows:

- enqueue, one job per call and in bulk (1,000 per call), from this process, no workers;
- a drain: jobs enqueued while the idle workers are stopped (SIGSTOP), so the window holds
  neither the enqueue nor kiq's start-up, only the workers' run through a full queue; of no-op
  jobs (prefetched in large batches), then of 10 ms jobs (no prefetch);
- jobs enqueued one per call at steady rates to idle workers (the enqueue is in the row);
- scheduled jobs, due one by one over a spread of time and all at once, and again with a
  second master (another host's ``kiq start``) running (their enqueue is in the rows); and
  scheduled an hour ahead, with one master and with two: the enqueue's PUBLISH, which wakes the
  scheduler of every master;
- jobs that fail once and succeed on their retry (the scheduler moves them back);
- one lost-host sweep (``kiq.recovery.Recovery.sweep``, run from here) over many live
  processes; it and the rows of two masters run on one Redis only (with shards, each shard's
  are those of one Redis);
- idle: Redis alone, then kiq at P and at P + ``--more`` worker processes (TTIN), per second;
  one master's and one worker process's share are solved from the two; and the connections
  each holds (``CLIENT LIST``, by the names kiq gives them).

kiq runs with ``heartbeat_ttl: 10`` (see HEARTBEAT_TTL), everything else at its defaults.
``INFO commandstats`` counts a script's call (``evalsha``) and again each command the script
runs, under that command's own name; the CPU column (``INFO cpu``) counts each microsecond
once, network included. Prints the tables of each layout and, for several, the rows they share
side by side; writes ``bench/results/sizing-<UTC time>.json``
(``--no-save``: not), and stops every process it started by pid, also on Ctrl-C.
docs/scaling.md turns the figures into a sizing guide.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis

if __package__ in (None, ""):  # run as a script: make the repository importable instead of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import kiq
from bench import report
from bench.procs import ROOT, Procs, Timeout, at_depth, wait_for
from bench.sizing_jobs import SizingFlaky, SizingNoop, SizingSleep
from bench.sizing_layouts import NAMES, STARTS, Layout
from kiq.keys import Keys

RESULTS = ROOT / "bench" / "results"
HARNESS = "kiq-sizing"  # the client name of the harness's own connection
APP_NAMES = (HARNESS, "kiq-client", "")  # the harness's connections (kiq names all of its own)
WORKER_ROLES = ("kiq-fetch-", "kiq-beat-", "kiq-wait-")  # connection names ending in a worker's identity
STALL_SECONDS = 60.0
# kiq's default heartbeat_ttl is 60 s, and a master sweeps for lost hosts only once Redis has
# been up that long: 10 s lets the sweeps into the idle windows of a short run. It changes no
# rate: heartbeats, sweeps and the scheduler's polls keep their 5 s heartbeat_interval.
HEARTBEAT_TTL = 10
POLL = 0.02
QUEUE = "default"

FULL: dict[str, Any] = {
    "single": 5_000, "bulk": 20_000, "drain": 20_000, "long": 3_000, "sleep": 0.01, "rates": "1000,5000",
    "paced_seconds": 3.0,
    "scheduled": 2_000, "spread": 2.0, "retries": 2_000, "idle_seconds": 15.0, "more": 4,
    "swept": 1_000, "sweeps": 20}
QUICK: dict[str, Any] = {
    "single": 500, "bulk": 2_000, "drain": 2_000, "long": 300, "sleep": 0.01, "rates": "500",
    "paced_seconds": 1.0,
    "scheduled": 200, "spread": 1.0, "retries": 200, "idle_seconds": 3.0, "more": 2,
    "swept": 100, "sweeps": 5}


@dataclass
class Window:
    """Redis's counters over one measured window, summed over the layout's servers, the
    harness's own calls taken out; ``servers``: each server's share, by its name."""

    label: str
    jobs: int  # 0 for an idle window
    seconds: float
    cpu_us: float  # redis-server's user + system CPU
    calls: dict[str, int]  # by command name (a script's inner commands counted under their own)
    usec: dict[str, int]  # commandstats' time per name (a script's includes its inner commands')
    bytes_in: int
    bytes_out: int
    processes: int = 0  # worker processes running during the window
    extra: dict[str, Any] = field(default_factory=dict)
    # by server name: its commands, cpu_us, bytes_in and bytes_out over the window
    servers: dict[str, dict[str, float]] = field(default_factory=dict)

    def per(self, divisor: float) -> dict[str, float]:
        """Totals per job (or per second): commands, script calls, Redis CPU, bytes."""
        return {"commands": sum(self.calls.values()) / divisor,
                "scripts": sum(n for name, n in self.calls.items() if name in ("evalsha", "eval")) / divisor,
                "cpu_us": self.cpu_us / divisor, "bytes_in": self.bytes_in / divisor,
                "bytes_out": self.bytes_out / divisor}


class Meter:
    """Resets and reads the counters of every server of a layout, counting the harness's own
    calls to each to take them out."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.conns = [redis.Redis.from_url(server.url, decode_responses=True, client_name=HARNESS,
                                           socket_timeout=30) for server in layout.servers]
        self.own: list[Counter[str]] = [Counter() for _ in self.conns]
        self._cpu = [0.0 for _ in self.conns]
        self._began = 0.0
        self._succeeded = 0  # jobs run without failing before the window

    def call(self, index: int, *args: Any) -> Any:
        """One command to server ``index``, counted under the name commandstats gives it
        (``config|resetstat``)."""
        name = str(args[0]).lower()
        if name in ("config", "client") and len(args) > 1:
            name = f"{name}|{str(args[1]).lower()}"
        self.own[index][name] += 1
        return self.conns[index].execute_command(*args)

    def begin(self) -> None:
        for index in range(len(self.conns)):
            self.own[index].clear()
            self.call(index, "CONFIG", "RESETSTAT")
            self._cpu[index] = redis_cpu(self.call(index, "INFO", "cpu"))
        done, failed = self.processed()
        self._succeeded = done - failed
        self._began = time.perf_counter()

    def end(self, label: str, jobs: int, processes: int = 0) -> Window:
        seconds = time.perf_counter() - self._began
        window = Window(label, jobs, seconds, 0.0, {}, {}, 0, 0, processes)
        for index, conn in enumerate(self.conns):
            info = conn.execute_command("INFO", "commandstats", "stats", "cpu")  # not in its own counts
            commands = 0
            for key, stat in info.items():
                if not key.startswith("cmdstat_"):
                    continue
                name = key[len("cmdstat_"):]
                total = int(stat["calls"])
                kept = total - self.own[index].get(name, 0)
                if kept > 0:
                    commands += kept
                    window.calls[name] = window.calls.get(name, 0) + kept
                    window.usec[name] = window.usec.get(name, 0) + round(int(stat["usec"]) * kept / total)
            cpu_us = (redis_cpu(info) - self._cpu[index]) * 1e6
            bytes_in, bytes_out = int(info["total_net_input_bytes"]), int(info["total_net_output_bytes"])
            window.cpu_us += cpu_us
            window.bytes_in += bytes_in
            window.bytes_out += bytes_out
            window.servers[self.layout.servers[index].name] = {
                "commands": commands, "cpu_us": cpu_us, "bytes_in": bytes_in, "bytes_out": bytes_out}
        return window

    def processed(self) -> tuple[int, int]:
        """``stat:processed`` and ``stat:failed`` of every shard, summed (every run, and the
        failed ones)."""
        done = failed = 0
        for index, namespace in self.layout.stores:
            keys = Keys(namespace)
            shard_done, shard_failed = self.call(index, "MGET", keys.processed, keys.failed)
            done, failed = done + int(shard_done or 0), failed + int(shard_failed or 0)
        return done, failed

    def blocked(self) -> int:
        """Clients blocked in a command (kiq's idle watchers), on every server."""
        return sum(int(conn.info("clients")["blocked_clients"]) for conn in self.conns)

    def clients(self) -> list[dict[str, Any]]:
        """``CLIENT LIST`` of every server, one entry per connection."""
        entries: list[dict[str, Any]] = []
        for index in range(len(self.conns)):
            listing = self.call(index, "CLIENT", "LIST")
            if isinstance(listing, list):
                entries.extend(listing)
            else:
                entries.extend(dict(part.split("=", 1) for part in line.split() if "=" in part)
                               for line in str(listing).splitlines())
        return entries

    def flush(self) -> None:
        for conn in self.conns:
            conn.flushall()

    def drop_schedules(self) -> None:
        """Empty every shard's ``schedule``."""
        for index, namespace in self.layout.stores:
            self.conns[index].delete(Keys(namespace).schedule)

    def wait_done(self, succeeded: int) -> None:
        """Poll until ``succeeded`` more jobs than at the window's start have run without
        failing; Timeout when no job ends for STALL_SECONDS."""
        target = self._succeeded + succeeded
        last, stalled_at = -1, time.monotonic()
        while True:
            done, failed = self.processed()
            if done - failed >= target:
                return
            if done != last:
                last, stalled_at = done, time.monotonic()
            elif time.monotonic() - stalled_at > STALL_SECONDS:
                raise Timeout(f"no job ended for {STALL_SECONDS:.0f}s ({target - done + failed} to go)")
            time.sleep(POLL)


def redis_cpu(info: dict[str, Any]) -> float:
    """redis-server's CPU seconds, all its threads, user and system (``INFO cpu``)."""
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Kiq:
    """``kiq start`` on the sizing jobs of a layout's queues, and its worker processes: with
    shards (and on a cluster, where every queue is a shard) ``processes`` for each shard."""

    def __init__(self, procs: Procs, layout: Layout, meter: Meter, processes: int, threads: int) -> None:
        self.procs = procs
        self.meter = meter
        self.queues = layout.queues
        self.per_signal = len(layout.stores)  # worker processes a TTIN adds: one per shard
        self.processes = processes * self.per_signal
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT),
               "PYTHONUNBUFFERED": "1"}
        config = procs.log_dir / f"kiq-{layout.name}-{time.monotonic_ns()}.yml"
        config.write_text(f"heartbeat_ttl: {HEARTBEAT_TTL}\n{layout.config}")
        queues = [flag for queue in layout.queues for flag in ("-q", queue)]
        command = [sys.executable, "-m", "kiq", "start", "-c", str(config), "-r", "bench.sizing_jobs",
                   *queues, "-p", str(processes), "--concurrency", str(threads), *layout.flags,
                   "--log-level", "error", "--metrics-port", "0"]
        self.master = procs.spawn(command, env, "kiq")
        self._stopped: list[int] = []

    def workers(self) -> list[int]:
        return at_depth([self.master.pid], "leaves")

    def wait_idle(self, others: int = 0) -> None:
        """Until every worker process is up and blocks on its queue (its idle watcher);
        ``others``: worker processes of other masters, blocking on the same servers."""
        def idle() -> bool:
            if self.master.poll() is not None:
                raise RuntimeError(f"kiq exited with code {self.master.returncode} "
                                   f"(log in {self.procs.log_dir})")
            return self.meter.blocked() >= self.processes + others and len(self.workers()) == self.processes
        wait_for(idle, STALL_SECONDS, 0.05, f"{self.processes} idle kiq workers")

    def stopped(self, fill: Callable[[], object]) -> None:
        """Run ``fill`` while the worker processes are stopped (SIGSTOP); resume them later
        with ``resume``. A stopped worker's blocked BLMOVE may still take one job."""
        self._stopped = self.workers()
        for pid in self._stopped:
            os.kill(pid, signal.SIGSTOP)
        fill()

    def resume(self) -> None:
        for pid in self._stopped:
            os.kill(pid, signal.SIGCONT)

    def grow(self, more: int) -> None:
        """About ``more`` worker processes (TTINs to the master, each adding one per shard),
        then wait until they are idle too."""
        for _ in range(max(1, round(more / self.per_signal))):
            os.kill(self.master.pid, signal.SIGTTIN)
            self.processes += self.per_signal
            time.sleep(0.2)
        self.wait_idle()


def enqueue_one(job: type[kiq.Job], queues: list[str], i: int, *args: Any, at: float | None = None) -> None:
    """The ``i``-th job of a row, one per call: the queues take turns."""
    job.set(queue=queues[i % len(queues)], wait_until=at).perform_later(*args)


def enqueue_many(job: type[kiq.Job], queues: list[str], n: int, *args: Any) -> None:
    """``n`` jobs in bulk (1,000 per call), shared evenly by the queues."""
    for k, queue in enumerate(queues):
        count = n // len(queues) + (k < n % len(queues))
        job.set(queue=queue).perform_bulk([list(args) for _ in range(count)])


def enqueue_single(meter: Meter, queues: list[str], n: int) -> Window:
    meter.begin()
    for i in range(n):
        enqueue_one(SizingNoop, queues, i)
    return meter.end("enqueue, 1 per call", n)


def enqueue_bulk(meter: Meter, queues: list[str], n: int) -> Window:
    meter.begin()
    enqueue_many(SizingNoop, queues, n)
    return meter.end("enqueue, bulk (1,000 per call)", n)


def drain(meter: Meter, running: Kiq, n: int, threads: int, sleep: float = 0.0) -> Window:
    """``n`` jobs enqueued in bulk while the workers are stopped, then run: kiq's drain alone.
    Jobs that ``sleep`` get no prefetch: each round trip carries the few that ended during the
    last one."""
    queues = running.queues
    if sleep:
        running.stopped(lambda: enqueue_many(SizingSleep, queues, n, sleep))
    else:
        running.stopped(lambda: enqueue_many(SizingNoop, queues, n))
    meter.begin()
    running.resume()
    meter.wait_done(n)
    jobs = f"{sleep * 1000:g} ms jobs" if sleep else "no-op jobs"
    return meter.end(f"processing, a drain of {jobs} ({running.processes} x {threads})", n, running.processes)


def paced(meter: Meter, running: Kiq, rate: float, seconds: float) -> Window:
    """Jobs enqueued one per call at ``rate`` (in all, the queues taking turns) to idle workers,
    and run."""
    n = max(1, int(rate * seconds))
    meter.begin()
    start = time.perf_counter()
    for i in range(n):
        enqueue_one(SizingNoop, running.queues, i)
        time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
    meter.wait_done(n)
    return meter.end(f"enqueue 1 per call + processing, {rate:,.0f} jobs/s", n, running.processes)


def scheduled(meter: Meter, running: Kiq, processes: int, n: int, spread: float, masters: int = 1) -> Window:
    """``n`` jobs scheduled one per call, due one after another over ``spread`` seconds (0: all
    at once), 0.5 s after the first enqueue."""
    meter.begin()
    first = time.time() + 0.5
    for i in range(n):
        enqueue_one(SizingNoop, running.queues, i, at=first + spread * i / n)
    meter.wait_done(n)
    due = f"due one by one over {spread:g} s" if spread else "all due at once"
    label = f"scheduled 1 per call + processing, {due}" + (f", {masters} masters" if masters > 1 else "")
    return meter.end(label, n, processes)


def scheduled_ahead(meter: Meter, running: Kiq, processes: int, n: int, masters: int) -> Window:
    """``n`` jobs scheduled one per call an hour ahead, and the second after: what each enqueue's
    PUBLISH costs, the wakeups of every master's scheduler included. They are removed after."""
    meter.begin()
    later = time.time() + 3600
    for i in range(n):
        enqueue_one(SizingNoop, running.queues, i, at=later)
    time.sleep(1.0)  # every scheduler has read its wakeups by now
    plural = "s" if masters > 1 else ""
    window = meter.end(f"scheduled 1 per call, due in an hour (no processing), {masters} master{plural}", n,
                       processes)
    meter.drop_schedules()
    return window


def retries(meter: Meter, running: Kiq, n: int) -> Window:
    """``n`` jobs that fail once and succeed on their retry, enqueued as for the drain."""
    running.stopped(lambda: enqueue_many(SizingFlaky, running.queues, n))
    meter.begin()
    running.resume()
    meter.wait_done(n)
    return meter.end("processing with one retry each", n, running.processes)


def sweeps(meter: Meter, url: str, processes: int, count: int) -> Window:
    """``count`` lost-host sweeps (``kiq.recovery.Recovery.sweep``, what every master runs every
    heartbeat_interval) over ``processes`` live processes with one in-progress list each,
    registered as their heartbeats register them; none is lost, so none is requeued."""
    from kiq.connection import connect
    from kiq.keys import Keys, member
    from kiq.recovery import Recovery

    conn = connect(url, name=HARNESS)
    keys = Keys()
    pipe = conn.pipeline(transaction=False)
    for n in range(processes):
        identity = f"sizing-host{n // 4}:{10_000 + n}:{n:012x}"
        pipe.hset(keys.process(identity), mapping={"beat": time.time(), "busy": 0})
        pipe.expire(keys.process(identity), 600)
        pipe.sadd(keys.processes, identity)
        pipe.sadd(keys.wip_registry, member(identity, QUEUE))
    pipe.execute()
    recovery = Recovery(conn, keys)
    meter.begin()
    for _ in range(count):
        recovery.sweep()
    window = meter.end(f"one sweep over {processes:,} live processes", count)
    conn.close()
    return window


def idle(meter: Meter, running: Kiq | None, seconds: float) -> Window:
    """``seconds`` of kiq with nothing to do (``running`` None: of Redis alone, no client)."""
    if running is not None:
        running.wait_idle()
        time.sleep(1.0)  # let the last round trips and watchers settle
    meter.begin()
    time.sleep(seconds)
    if running is None:
        return meter.end("idle, Redis alone", 0)
    window = meter.end(f"idle, {running.processes} worker processes", 0, running.processes)
    window.extra["connections"] = connections(meter)
    return window


def connections(meter: Meter) -> dict[str, Any]:
    """Connections by the name each kiq process gives its own, on every server of the layout:
    per master (and its supervisor), and per worker process (names ending in the worker's
    identity); and the memory Redis holds for each (``tot-mem``), on average."""
    entries = meter.clients()
    master: Counter[str] = Counter()
    workers: dict[str, Counter[str]] = {}
    memory = []
    for entry in entries:
        name = str(entry.get("name", ""))
        if name in APP_NAMES:
            continue
        memory.append(int(entry.get("tot-mem", 0)))
        role = next((prefix[:-1] for prefix in WORKER_ROLES if name.startswith(prefix)), None)
        if role is None:
            master[name] += 1
        else:
            workers.setdefault(name[len(role) + 1:], Counter())[role] += 1
    return {"master": dict(master), "workers": {identity: dict(roles) for identity, roles in workers.items()},
            "bytes_each": sum(memory) / len(memory) if memory else 0}


def idle_split(alone: Window, few: Window, more: Window) -> dict[str, dict[str, float]]:
    """Per second, by command name: one master (with its supervisor) and one worker process,
    solved from two idle windows at different worker counts, less Redis's own idle CPU:
    kiq = master + P x worker."""
    added = more.processes - few.processes
    names = set(few.calls) | set(more.calls)
    rate_few = {name: few.calls.get(name, 0) / few.seconds for name in names}
    rate_more = {name: more.calls.get(name, 0) / more.seconds for name in names}
    worker = {name: (rate_more[name] - rate_few[name]) / added for name in names}
    master = {name: rate_few[name] - few.processes * worker[name] for name in names}
    cpu_alone = alone.cpu_us / alone.seconds
    cpu_worker = (more.cpu_us / more.seconds - few.cpu_us / few.seconds) / added
    cpu_master = few.cpu_us / few.seconds - cpu_alone - few.processes * cpu_worker
    return {"master": {**master, "(cpu_us)": cpu_master}, "worker": {**worker, "(cpu_us)": cpu_worker},
            "redis": {"(cpu_us)": cpu_alone}}


# -- output -------------------------------------------------------------------


def per_core(cpu_us: float) -> str:
    return f"{1e6 / cpu_us:,.0f}" if cpu_us > 0 else "n/a"


def job_table(windows: list[Window]) -> list[str]:
    lines = ["| per job | jobs | commands | script calls | Redis CPU µs | jobs/s per Redis core "
             "| bytes in / out |", "|---|---:|---:|---:|---:|---:|---:|"]
    for window in windows:
        per = window.per(window.jobs)
        lines.append(f"| {window.label} | {window.jobs:,} | {per['commands']:.2f} | {per['scripts']:.3f} | "
                     f"{per['cpu_us']:.1f} | {per_core(per['cpu_us'])} | "
                     f"{per['bytes_in']:,.0f} / {per['bytes_out']:,.0f} |")
    return lines


def figure(value: float) -> str:
    """Three significant digits, without an exponent for large values (``exists 1,000``)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def breakdown(window: Window, divisor: float, unit: str) -> str:
    """The commands of a window per job (or per second), most frequent first."""
    ranked = sorted(window.calls.items(), key=lambda kv: -kv[1])
    parts = [f"{name} {figure(n / divisor)}" for name, n in ranked]
    return f"  {window.label}, commands {unit}: " + (", ".join(parts) or "none")


def idle_table(alone: Window, few: Window, more: Window, split: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| idle, per second | commands | Redis CPU µs |", "|---|---:|---:|"]
    for window, label in ((alone, "Redis alone, no client"),
                          (few, f"kiq: 1 master + {few.processes} worker processes"),
                          (more, f"kiq: 1 master + {more.processes} worker processes")):
        per = window.per(window.seconds)
        lines.append(f"| {label} ({window.seconds:.0f} s) | {per['commands']:.2f} | {per['cpu_us']:.0f} |")
    for who, label in (("master", "one master (scheduler, sweep, supervisor), less Redis alone: CPU noisy"),
                       ("worker", "one worker process")):
        rates = split[who]
        commands = sum(v for k, v in rates.items() if not k.startswith("("))
        lines.append(f"| {label} | {commands:.2f} | {rates['(cpu_us)']:.0f} |")
    return lines


def idle_breakdown(split: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for who in ("master", "worker"):
        # the solve of two noisy windows can leave a small negative rate: not a command sent
        rates = sorted(((k, v) for k, v in split[who].items() if not k.startswith("(") and v >= 0.005),
                       key=lambda kv: -kv[1])
        lines.append(f"  one {who}, commands per second: " + ", ".join(f"{k} {v:.2f}" for k, v in rates))
    return lines


def connection_lines(window: Window) -> list[str]:
    found = window.extra["connections"]
    workers = found["workers"]
    master = found["master"]
    per_worker = Counter[str]()
    for roles in workers.values():
        per_worker.update(roles)
    count = max(1, len(workers))
    each = ", ".join(f"{role} {n / count:g}" for role, n in sorted(per_worker.items()))
    return [f"connections at {window.processes} worker processes: master {sum(master.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(master.items()))}); each worker process "
            f"{sum(per_worker.values()) / count:g} ({each}); {len(workers)} worker processes seen; "
            f"{found['bytes_each'] / 1024:.1f} KiB of Redis memory each"]


def server_table(servers: list[str], windows: list[Window]) -> list[str]:
    """Each server's share of every row: commands and Redis CPU per job (per second for the idle
    rows), and the busiest server's share of them (an even spread is 1 / servers)."""
    lines = [f"| by server ({' / '.join(servers)}) | commands | Redis CPU µs | busiest server's share: "
             f"commands, CPU (even: {100 / len(servers):.0f} %) |", "|---|---:|---:|---:|"]
    for window in windows:
        divisor = window.jobs or window.seconds
        unit = "per job" if window.jobs else "per second"
        each = [window.servers.get(name, {}) for name in servers]
        commands = [float(one.get("commands", 0)) for one in each]
        cpu = [max(0.0, float(one.get("cpu_us", 0))) for one in each]
        lines.append(f"| {window.label}, {unit} | {' / '.join(figure(c / divisor) for c in commands)} | "
                     f"{' / '.join(f'{c / divisor:.1f}' for c in cpu)} | {share(commands)}, {share(cpu)} |")
    return lines


def share(values: list[float]) -> str:
    total = sum(values)
    return f"{100 * max(values) / total:.0f} %" if total > 0 else "n/a"


def row_key(label: str) -> str:
    """A row's label without its worker count, to match it across layouts."""
    return re.sub(r" \(\d+ x \d+\)", "", label)


def layout_table(results: list[dict[str, Any]]) -> list[str]:
    """The rows every layout has, side by side: commands and Redis CPU per job, summed over the
    layout's servers, and the CPU against one Redis's."""
    base = {row_key(w.label): w for w in results[0]["jobs"]}
    titles = " | ".join(f"{result['title']}: commands, CPU µs" for result in results)
    lines = [f"| per job, all servers | {titles} |", "|---|" + "---:|" * len(results)]
    for window in results[-1]["jobs"]:
        key = row_key(window.label)
        cells = []
        for result in results:
            found = next((w for w in result["jobs"] if row_key(w.label) == key), None)
            if found is None:
                cells.append("")
                continue
            per = found.per(found.jobs)
            cell = f"{per['commands']:.2f}, {per['cpu_us']:.1f}"
            if result is not results[0] and key in base and base[key].cpu_us > 0:
                cell += f" (x {found.cpu_us / found.jobs / (base[key].cpu_us / base[key].jobs):.2f})"
            cells.append(cell)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for who in ("worker", "master"):
        cells = []
        for result in results:
            rates = result["split"][who]
            commands = sum(v for k, v in rates.items() if not k.startswith("("))
            cells.append(f"{commands:.2f}, {rates['(cpu_us)']:.0f}")
        lines.append(f"| idle, one {who}{' process' if who == 'worker' else ''}, per second | "
                     + " | ".join(cells) + " |")
    return lines


def header() -> str:
    machine = report.machine()
    load = ", ".join(f"{value:.1f}" for value in machine["loadavg_at_start"])
    return (f"kiq sizing: redis-server {server_version()}, {machine['cores']} cores ({machine['cpu']}), "
            f"Python {machine['python']}, redis-py {redis.__version__}, commit {commit()}, "
            f"load average {load}")


def server_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.split("v=")[1].split()[0] if "v=" in out else "unknown"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- main ---------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/sizing.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small runs, short idle windows (about 30 s)")
    parser.add_argument("--layout", choices=[*NAMES, "all"],
                        help="one Redis, two shards, a 3-primary cluster, or each in turn "
                        "(default: all; --quick: one)")
    parser.add_argument("--processes", type=int,
                        help="worker processes per shard (one Redis: 2; shards, cluster: 1, one per queue)")
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--single", type=int, help=f"jobs enqueued one per call ({FULL['single']})")
    parser.add_argument("--bulk", type=int, help=f"jobs enqueued in bulk ({FULL['bulk']})")
    parser.add_argument("--drain", type=int, help=f"jobs of the drain ({FULL['drain']})")
    parser.add_argument("--long", type=int, help=f"jobs of the drain of sleeping jobs ({FULL['long']})")
    parser.add_argument("--sleep", type=float, help=f"seconds each of them sleeps ({FULL['sleep']:g})")
    parser.add_argument("--rates", help=f"jobs/s of the paced rows, comma-separated ({FULL['rates']})")
    parser.add_argument("--paced-seconds", type=float,
                        help=f"length of each paced row ({FULL['paced_seconds']:g})")
    parser.add_argument("--scheduled", type=int, help=f"scheduled jobs ({FULL['scheduled']})")
    parser.add_argument("--spread", type=float, help=f"seconds over which they fall due ({FULL['spread']:g})")
    parser.add_argument("--retries", type=int, help=f"jobs that fail once ({FULL['retries']})")
    parser.add_argument("--idle-seconds", type=float, help=f"each idle window ({FULL['idle_seconds']:g})")
    parser.add_argument("--more", type=int,
                        help=f"worker processes added for the second idle window ({FULL['more']})")
    parser.add_argument("--swept", type=int, help=f"live processes in the sweep row ({FULL['swept']})")
    parser.add_argument("--sweeps", type=int, help=f"sweeps timed over them ({FULL['sweeps']})")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/sizing-*.json")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    layout = args.layout or ("one" if args.quick else "all")
    args.layouts = list(NAMES) if layout == "all" else [layout]
    return args


def measure(args: argparse.Namespace, procs: Procs, name: str) -> dict[str, Any]:
    """Every row on one layout; the lost-host sweep and the rows of two masters on one Redis only
    (on shards each shard's are those of one Redis)."""
    layout = STARTS[name](procs)
    version = str(layout.servers[0].conn.info("server")["redis_version"])
    if int(version.split(".")[0]) < 7:
        raise RuntimeError(f"redis-server {version}: the readings need Redis 7 (INFO of several sections)")
    print(f"measuring {layout.title} ({layout.spread()})", flush=True)
    kiq.configure(**layout.client)
    meter = Meter(layout)
    for i in range(len(layout.queues)):  # the client's connections (a cluster's: its slots) made before
        enqueue_one(SizingNoop, layout.queues, i)
    meter.flush()
    jobs = [enqueue_single(meter, layout.queues, args.single), enqueue_bulk(meter, layout.queues, args.bulk)]
    meter.flush()
    swept = sweeps(meter, layout.url, args.swept, args.sweeps) if name == "one" else None
    meter.flush()
    alone = idle(meter, None, args.idle_seconds / 2)
    processes = args.processes if args.processes is not None else (2 if name == "one" else 1)
    running = Kiq(procs, layout, meter, processes, args.threads)
    running.wait_idle()
    jobs.append(drain(meter, running, args.drain, args.threads))
    running.wait_idle()
    jobs.append(drain(meter, running, args.long, args.threads, sleep=args.sleep))
    for rate in (float(r) for r in str(args.rates).split(",")):
        running.wait_idle()
        jobs.append(paced(meter, running, rate, args.paced_seconds))
    for spread in (args.spread, 0.0):
        running.wait_idle()
        jobs.append(scheduled(meter, running, running.processes, args.scheduled, spread))
    running.wait_idle()
    jobs.append(retries(meter, running, args.retries))
    jobs.append(scheduled_ahead(meter, running, running.processes, args.scheduled, masters=1))
    few = idle(meter, running, args.idle_seconds)
    running.grow(args.more)
    more = idle(meter, running, args.idle_seconds)
    if name == "one":
        second = Kiq(procs, layout, meter, 1, args.threads)  # another host's master, one worker
        second.wait_idle(others=running.processes)
        jobs.append(scheduled(meter, running, running.processes + 1, args.scheduled, args.spread, masters=2))
        jobs.append(scheduled_ahead(meter, running, running.processes + 1, args.scheduled, masters=2))
    return {"layout": name, "title": layout.title, "spread": layout.spread(), "redis_version": version,
            "servers": [server.name for server in layout.servers], "jobs": jobs, "idle": [alone, few, more],
            "sweep": swept, "split": idle_split(alone, few, more)}


def show(result: dict[str, Any]) -> None:
    jobs, (alone, few, more), split = result["jobs"], result["idle"], result["split"]
    print(f"\n## {result['title']} ({result['spread']})")
    print("\n" + "\n".join(job_table(jobs)))
    for window in jobs:
        print(breakdown(window, window.jobs, "per job"))
    print("\n" + "\n".join(idle_table(alone, few, more, split)))
    swept = result["sweep"]
    if swept is not None:
        per = swept.per(swept.jobs)
        print(f"| {swept.label} (each master, every heartbeat_interval) | {per['commands']:.0f} a sweep | "
              f"{per['cpu_us']:.0f} a sweep |")
    print("\n".join(idle_breakdown(split)))
    if swept is not None:
        print(breakdown(swept, swept.jobs, "per sweep"))
    print("\n".join(connection_lines(few) + connection_lines(more)), flush=True)
    if len(result["servers"]) > 1:
        print("\n" + "\n".join(server_table(result["servers"], [*jobs, few, more])), flush=True)


def save(args: argparse.Namespace, results: list[dict[str, Any]], stamp: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sizing-{stamp}.json"
    path.write_text(json.dumps({
        "command": sys.argv, "settings": vars(args), "machine": report.machine(), "commit": commit(),
        "redis_version": results[0]["redis_version"], "redis_py": redis.__version__,
        "layouts": {result["layout"]: {
            "title": result["title"], "spread": result["spread"], "servers": result["servers"],
            "jobs": [asdict(w) for w in result["jobs"]], "idle": [asdict(w) for w in result["idle"]],
            "sweep": asdict(result["sweep"]) if result["sweep"] is not None else None,
            "idle_per_second": result["split"]} for result in results}}, indent=2))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    procs = Procs(Path(tempfile.mkdtemp(prefix=f"kiq-sizing-{stamp}-")))
    began = time.monotonic()
    print(header(), flush=True)
    results = []
    try:
        for name in args.layouts:
            results.append(measure(args, procs, name))
            procs.stop_all()  # its servers and kiq: the next layout has the machine to itself
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        print(f"failed: {type(error).__name__}: {error} (logs in {procs.log_dir})")
        return 1
    finally:
        procs.stop_all()
    for result in results:
        show(result)
    if len(results) > 1:
        print("\n" + "\n".join(layout_table(results)))
    print(f"\n{time.monotonic() - began:.0f} s in all")
    if not args.no_save:
        print(f"results in {save(args, results, stamp).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make bench-sizing``: what kiq's command pattern costs Redis, per job and per idle second.

Starts a private redis-server on a free loopback port and ``kiq start`` (2 worker processes x
10 threads by default) on jobs whose bodies touch no Redis (``bench/sizing_jobs.py``), so every
command counted is kiq's. Each row is one window between two readings of Redis's own
counters: ``CONFIG RESETSTAT`` at its start, then ``INFO commandstats``, ``INFO stats`` (bytes)
and ``INFO cpu`` (redis-server's user + system CPU, read at both ends) at its end. The
harness's own calls in a window (the reset, the first ``INFO``, its polls of ``stat:processed``)
are taken out of the counts by name; their CPU, a few dozen calls against thousands of jobs,
stays in. The rows:

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
- one lost-host sweep (``kiq.recovery.Recovery.sweep``, run from here) over many live processes;
- idle: Redis alone, then kiq at P and at P + ``--more`` worker processes (TTIN), per second;
  one master's and one worker process's share are solved from the two; and the connections
  each holds (``CLIENT LIST``, by the names kiq gives them).

kiq runs with ``heartbeat_ttl: 10`` (see HEARTBEAT_TTL), everything else at its defaults.
``INFO commandstats`` counts a script's call (``evalsha``) and again each command the script
runs, under that command's own name; the CPU column (``INFO cpu``) counts each microsecond
once, network included. Prints a table, writes ``bench/results/sizing-<UTC time>.json``
(``--no-save``: not), and stops every process it started by pid, also on Ctrl-C.
docs/scaling.md turns the figures into a sizing guide.
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench import report
from bench.procs import ROOT, Procs, Timeout, at_depth, wait_for
from bench.redisd import RedisServer

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
    "scheduled": 2_000, "spread": 2.0, "retries": 2_000, "idle_seconds": 20.0, "more": 4,
    "swept": 1_000, "sweeps": 20}
QUICK: dict[str, Any] = {
    "single": 500, "bulk": 2_000, "drain": 2_000, "long": 300, "sleep": 0.01, "rates": "500",
    "paced_seconds": 1.0,
    "scheduled": 200, "spread": 1.0, "retries": 200, "idle_seconds": 3.0, "more": 2,
    "swept": 100, "sweeps": 5}


@dataclass
class Window:
    """Redis's counters over one measured window, the harness's own calls taken out."""

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

    def per(self, divisor: float) -> dict[str, float]:
        """Totals per job (or per second): commands, script calls, Redis CPU, bytes."""
        return {"commands": sum(self.calls.values()) / divisor,
                "scripts": sum(n for name, n in self.calls.items() if name in ("evalsha", "eval")) / divisor,
                "cpu_us": self.cpu_us / divisor, "bytes_in": self.bytes_in / divisor,
                "bytes_out": self.bytes_out / divisor}


class Meter:
    """Resets and reads Redis's counters, counting the harness's own calls to take them out."""

    def __init__(self, url: str) -> None:
        self.conn = redis.Redis.from_url(url, decode_responses=True, client_name=HARNESS, socket_timeout=30)
        self.own: Counter[str] = Counter()
        self._cpu = 0.0
        self._began = 0.0
        self._succeeded = 0  # jobs run without failing before the window

    def call(self, *args: Any) -> Any:
        """One command, counted under the name commandstats gives it (``config|resetstat``)."""
        name = str(args[0]).lower()
        if name in ("config", "client") and len(args) > 1:
            name = f"{name}|{str(args[1]).lower()}"
        self.own[name] += 1
        return self.conn.execute_command(*args)

    def begin(self) -> None:
        self.own.clear()
        self.call("CONFIG", "RESETSTAT")
        self._cpu = redis_cpu(self.call("INFO", "cpu"))
        done, failed = self.processed()
        self._succeeded = done - failed
        self._began = time.perf_counter()

    def end(self, label: str, jobs: int, processes: int = 0) -> Window:
        seconds = time.perf_counter() - self._began
        info = self.conn.execute_command("INFO", "commandstats", "stats", "cpu")  # not in its own counts
        calls: dict[str, int] = {}
        usec: dict[str, int] = {}
        for key, stat in info.items():
            if not key.startswith("cmdstat_"):
                continue
            name = key[len("cmdstat_"):]
            total = int(stat["calls"])
            kept = total - self.own.get(name, 0)
            if kept > 0:
                calls[name] = kept
                usec[name] = round(int(stat["usec"]) * kept / total)
        return Window(label, jobs, seconds, (redis_cpu(info) - self._cpu) * 1e6, calls, usec,
                      int(info["total_net_input_bytes"]), int(info["total_net_output_bytes"]), processes)

    def processed(self) -> tuple[int, int]:
        """``stat:processed`` and ``stat:failed`` (every run, and the failed ones)."""
        done, failed = self.call("MGET", "stat:processed", "stat:failed")
        return int(done or 0), int(failed or 0)

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
    """``kiq start`` on the sizing jobs, and its worker processes."""

    def __init__(self, procs: Procs, url: str, meter: Meter, processes: int, threads: int) -> None:
        self.procs = procs
        self.url = url
        self.meter = meter
        self.processes = processes
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT),
               "PYTHONUNBUFFERED": "1"}
        config = procs.log_dir / "kiq.yml"
        config.write_text(f"heartbeat_ttl: {HEARTBEAT_TTL}\n")
        command = [sys.executable, "-m", "kiq", "start", "-c", str(config), "-r", "bench.sizing_jobs",
                   "-q", QUEUE, "-p", str(processes), "--concurrency", str(threads), "--redis-url", url,
                   "--log-level", "error", "--metrics-port", "0"]
        self.master = procs.spawn(command, env, "kiq")
        self._stopped: list[int] = []

    def workers(self) -> list[int]:
        return at_depth([self.master.pid], "leaves")

    def wait_idle(self, others: int = 0) -> None:
        """Until every worker process is up and blocks on the queue (its idle watcher);
        ``others``: worker processes of other masters, blocking on the same Redis."""
        def idle() -> bool:
            if self.master.poll() is not None:
                raise RuntimeError(f"kiq exited with code {self.master.returncode} "
                                   f"(log in {self.procs.log_dir})")
            blocked = int(self.meter.conn.info("clients")["blocked_clients"])
            return blocked >= self.processes + others and len(self.workers()) == self.processes
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
        """``more`` worker processes (TTIN to the master), then wait until they are idle too."""
        for _ in range(more):
            os.kill(self.master.pid, signal.SIGTTIN)
            self.processes += 1
            time.sleep(0.2)
        self.wait_idle()


def enqueue_single(meter: Meter, n: int) -> Window:
    from bench.sizing_jobs import SizingNoop

    meter.begin()
    for _ in range(n):
        SizingNoop.perform_later()
    return meter.end("enqueue, 1 per call", n)


def enqueue_bulk(meter: Meter, n: int) -> Window:
    from bench.sizing_jobs import SizingNoop

    meter.begin()
    SizingNoop.perform_bulk([[] for _ in range(n)])
    return meter.end("enqueue, bulk (1,000 per call)", n)


def drain(meter: Meter, running: Kiq, n: int, threads: int, sleep: float = 0.0) -> Window:
    """``n`` jobs enqueued in bulk while the workers are stopped, then run: kiq's drain alone.
    Jobs that ``sleep`` get no prefetch: each round trip carries the few that ended during the
    last one."""
    from bench.sizing_jobs import SizingNoop, SizingSleep

    if sleep:
        running.stopped(lambda: SizingSleep.perform_bulk([[sleep] for _ in range(n)]))
    else:
        running.stopped(lambda: SizingNoop.perform_bulk([[] for _ in range(n)]))
    meter.begin()
    running.resume()
    meter.wait_done(n)
    jobs = f"{sleep * 1000:g} ms jobs" if sleep else "no-op jobs"
    return meter.end(f"processing, a drain of {jobs} ({running.processes} x {threads})", n, running.processes)


def paced(meter: Meter, running: Kiq, rate: float, seconds: float) -> Window:
    """Jobs enqueued one per call at ``rate`` to idle workers, and run."""
    from bench.sizing_jobs import SizingNoop

    n = max(1, int(rate * seconds))
    meter.begin()
    start = time.perf_counter()
    for i in range(n):
        SizingNoop.perform_later()
        time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
    meter.wait_done(n)
    return meter.end(f"enqueue 1 per call + processing, {rate:,.0f} jobs/s", n, running.processes)


def scheduled(meter: Meter, processes: int, n: int, spread: float, masters: int = 1) -> Window:
    """``n`` jobs scheduled one per call, due one after another over ``spread`` seconds (0: all
    at once), 0.5 s after the first enqueue."""
    from bench.sizing_jobs import SizingNoop

    meter.begin()
    first = time.time() + 0.5
    for i in range(n):
        SizingNoop.set(wait_until=first + spread * i / n).perform_later()
    meter.wait_done(n)
    due = f"due one by one over {spread:g} s" if spread else "all due at once"
    label = f"scheduled 1 per call + processing, {due}" + (f", {masters} masters" if masters > 1 else "")
    return meter.end(label, n, processes)


def scheduled_ahead(meter: Meter, processes: int, n: int, masters: int) -> Window:
    """``n`` jobs scheduled one per call an hour ahead, and the second after: what each enqueue's
    PUBLISH costs, the wakeups of every master's scheduler included. They are removed after."""
    from bench.sizing_jobs import SizingNoop

    meter.begin()
    later = time.time() + 3600
    for _ in range(n):
        SizingNoop.set(wait_until=later).perform_later()
    time.sleep(1.0)  # every scheduler has read its wakeups by now
    plural = "s" if masters > 1 else ""
    window = meter.end(f"scheduled 1 per call, due in an hour (no processing), {masters} master{plural}", n,
                       processes)
    meter.conn.delete("schedule")
    return window


def retries(meter: Meter, running: Kiq, n: int) -> Window:
    """``n`` jobs that fail once and succeed on their retry, enqueued while the workers are stopped."""
    from bench.sizing_jobs import SizingFlaky

    running.stopped(lambda: SizingFlaky.perform_bulk([[] for _ in range(n)]))
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
    """Connections by the name each kiq process gives its own: per master (and its
    supervisor), and per worker process (names ending in the worker's identity); and the memory
    Redis holds for each (``tot-mem``), on average."""
    listing = meter.call("CLIENT", "LIST")
    lines = [] if isinstance(listing, list) else str(listing).splitlines()
    entries = listing if isinstance(listing, list) else [
        dict(field.split("=", 1) for field in line.split() if "=" in field) for line in lines]
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


def header(server_version: str) -> str:
    machine = report.machine()
    load = ", ".join(f"{value:.1f}" for value in machine["loadavg_at_start"])
    return (f"kiq sizing: redis-server {server_version}, {machine['cores']} cores ({machine['cpu']}), "
            f"Python {machine['python']}, redis-py {redis.__version__}, commit {commit()}, "
            f"load average {load}")


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
    parser.add_argument("--processes", type=int, default=2)
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
    return args


def measure(args: argparse.Namespace, procs: Procs) -> dict[str, Any]:
    import kiq

    redis_dir = procs.log_dir / "redis"
    redis_dir.mkdir()
    server = RedisServer(procs, redis_dir)
    client = server.start()
    version = server.version(client)
    if int(version.split(".")[0]) < 7:
        raise RuntimeError(f"redis-server {version}: the readings need Redis 7 (INFO of several sections)")
    print(header(version), flush=True)
    kiq.configure(server.url)
    meter = Meter(server.url)
    jobs = [enqueue_single(meter, args.single), enqueue_bulk(meter, args.bulk)]
    client.flushall()
    swept = sweeps(meter, server.url, args.swept, args.sweeps)
    client.flushall()
    alone = idle(meter, None, args.idle_seconds / 2)
    running = Kiq(procs, server.url, meter, args.processes, args.threads)
    running.wait_idle()
    jobs.append(drain(meter, running, args.drain, args.threads))
    running.wait_idle()
    jobs.append(drain(meter, running, args.long, args.threads, sleep=args.sleep))
    running.wait_idle()
    for rate in (float(r) for r in str(args.rates).split(",")):
        running.wait_idle()
        jobs.append(paced(meter, running, rate, args.paced_seconds))
    for spread in (args.spread, 0.0):
        running.wait_idle()
        jobs.append(scheduled(meter, running.processes, args.scheduled, spread))
    running.wait_idle()
    jobs.append(retries(meter, running, args.retries))
    jobs.append(scheduled_ahead(meter, running.processes, args.scheduled, masters=1))
    few = idle(meter, running, args.idle_seconds)
    running.grow(args.more)
    more = idle(meter, running, args.idle_seconds)
    second = Kiq(procs, server.url, meter, 1, args.threads)  # another host's master, one worker
    second.wait_idle(others=running.processes)
    jobs.append(scheduled(meter, running.processes + 1, args.scheduled, args.spread, masters=2))
    jobs.append(scheduled_ahead(meter, running.processes + 1, args.scheduled, masters=2))
    return {"redis_version": version, "jobs": jobs, "idle": [alone, few, more], "sweep": swept,
            "split": idle_split(alone, few, more)}


def show(result: dict[str, Any]) -> None:
    jobs, (alone, few, more), split = result["jobs"], result["idle"], result["split"]
    print("\n" + "\n".join(job_table(jobs)))
    for window in jobs:
        print(breakdown(window, window.jobs, "per job"))
    print("\n" + "\n".join(idle_table(alone, few, more, split)))
    swept = result["sweep"]
    per = swept.per(swept.jobs)
    print(f"| {swept.label} (each master, every heartbeat_interval) | {per['commands']:.0f} a sweep | "
          f"{per['cpu_us']:.0f} a sweep |")
    print("\n".join(idle_breakdown(split)))
    print(breakdown(swept, swept.jobs, "per sweep"))
    print("\n".join(connection_lines(few) + connection_lines(more)), flush=True)


def save(args: argparse.Namespace, result: dict[str, Any], stamp: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sizing-{stamp}.json"
    path.write_text(json.dumps({
        "command": sys.argv, "settings": vars(args), "machine": report.machine(), "commit": commit(),
        "redis_version": result["redis_version"], "redis_py": redis.__version__,
        "jobs": [asdict(w) for w in result["jobs"]], "idle": [asdict(w) for w in result["idle"]],
        "sweep": asdict(result["sweep"]),
        "idle_per_second": result["split"]}, indent=2))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    procs = Procs(Path(tempfile.mkdtemp(prefix=f"kiq-sizing-{stamp}-")))
    began = time.monotonic()
    try:
        result = measure(args, procs)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        print(f"failed: {type(error).__name__}: {error} (logs in {procs.log_dir})")
        return 1
    finally:
        procs.stop_all()
    show(result)
    print(f"\n{time.monotonic() - began:.0f} s in all")
    if not args.no_save:
        print(f"results in {save(args, result, stamp).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

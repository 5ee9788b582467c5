"""One system's measurements, seen from the orchestrator: it starts workers, drives the
system's own client (``bench.runtimes``) and reads what the jobs recorded in Redis.

Before the repeats, a pilot sizes each system's processing runs (``size``). Then four phases
per repeat, each with freshly started workers on a flushed Redis:

- throughput: enqueue no-op jobs one per call (then, where the system has it, in bulk),
  start the workers, time until the counter reaches N; CPU and cores from the first job to
  the last; RSS at that moment;
- mixed: the same with every 100th job a nap of 100 ms: jobs/s;
- warm: with idle workers, RSS, latency from enqueue to start, the fast jobs' latency under
  a paced mixed load, lateness of scheduled jobs, and recovery of a slow job whose process
  is SIGKILLed;
- long: on P x 2 slots, batches of naps of 0.2 s, 1 s and 2 s: makespan against the ideal.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bench import figures, jobs
from bench.figures import Reading
from bench.procs import (
    ROOT,
    Procs,
    Timeout,
    alive,
    at_depth,
    cpu_seconds,
    machine_busy,
    rss_mb,
    start_time,
    trees,
    wait_for,
)
from bench.runtimes import Runtime

STALL_SECONDS = 60.0
MAX_PROCESSING_SECONDS = 1800.0
WARM_JOBS = 20
PILOT_JOBS = 20_000
PILOT_SECONDS = 2.0  # at most this long to fill the pilot's queue, and to watch it drain


@dataclass
class Settings:
    seconds: float = 5.0  # a processing run lasts at least this long from its first job
    jobs: int = 0  # or exactly this many jobs in every processing run
    least_jobs: int = 200
    most_jobs: int = 400_000
    enqueue_jobs: int = 20_000  # at most this many timed one-per-call enqueues where there is bulk
    processes: int = 2
    threads: int = 10
    latency_jobs: int = 200
    latency_gap: float = 0.02
    mixed_jobs: int = 1_000  # paced mixed load for the fast jobs' latency
    mixed_gap: float = 0.001
    nap_every: int = 100  # the mixed scenario's slow jobs: every 100th...
    nap_seconds: float = 0.1  # ...sleeps 100 ms
    scheduled_jobs: int = 50
    scheduled_delay: float = 1.0
    slow_seconds: float = 2.0  # the recovery row's job: killed as soon as it starts
    recovery_wait: float = 5.0
    long_jobs: int = 8  # per batch, one batch per duration
    long_threads: int = 2
    long_seconds: tuple[float, ...] = (0.2, 1.0, 2.0)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the two nearest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def long_key(seconds: float) -> str:
    """The result key of the long jobs of ``seconds``: long_0.2, long_1, long_2."""
    return f"long_{seconds:g}"


class System:
    """A job system under test, driven through its own client's runtime."""

    def __init__(self, name: str, runtime: Runtime, procs: Procs, client: redis.Redis, redis_url: str,
                 settings: Settings, redis_pid: int = 0) -> None:
        self.name = name
        self.runtime = runtime
        self.redis_pid = redis_pid
        self.procs = procs
        self.client = client
        self.redis_url = redis_url
        self.settings = settings
        self.info: dict[str, Any] = {}
        self.long_info: dict[str, Any] = {}
        self.jobs = settings.jobs

    # -- plumbing -------------------------------------------------------

    def env(self, target: int = 0) -> dict[str, str]:
        dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "RUBYLIB", "RUBYOPT")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        path = env.get("PATH", "/usr/bin:/bin")
        env["PATH"] = f"{self.runtime.bin_dir}{os.pathsep}{path}" if self.runtime.bin_dir else path
        env["PYTHONPATH"] = str(ROOT)
        env["BENCH_REDIS_URL"] = self.redis_url
        env["BENCH_TARGET"] = str(target)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.runtime.env)
        return env

    def driver(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        out = self.procs.run([*self.runtime.command, *args], self.env(), timeout)
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def load_info(self) -> None:
        s = self.settings
        for threads, attribute in ((s.threads, "info"), (s.long_threads, "long_info")):
            info = self.driver("info", "--processes", str(s.processes), "--threads", str(threads),
                               "--redis-url", self.redis_url, timeout=60)
            info.setdefault("slots", s.processes * threads)
            setattr(self, attribute, info)

    def start_workers(self, target: int, info: dict[str, Any] | None = None) -> list[subprocess.Popen[bytes]]:
        env = self.env(target)
        commands = (info or self.info)["commands"]
        return [self.procs.spawn(argv, env, f"{self.name}-worker") for argv in commands]

    def worker_pids(self, roots: list[subprocess.Popen[bytes]]) -> list[int]:
        return at_depth([p.pid for p in roots if p.poll() is None], self.info["depth"])

    def rss(self, roots: list[subprocess.Popen[bytes]]) -> float:
        """The largest RSS among the processes that run jobs, in MB."""
        sizes = [rss_mb(pid) for pid in self.worker_pids(roots)]
        if not sizes:
            raise RuntimeError("no worker processes found")
        return max(sizes)

    def _check_running(self, roots: list[subprocess.Popen[bytes]]) -> None:
        dead = [p for p in roots if p.poll() is not None]
        if dead:
            raise RuntimeError(f"worker exited with code {dead[0].returncode} (see {self.procs.log_dir})")

    def _llen(self, key: str) -> int:
        return int(self.client.llen(key))

    def _floats(self, key: str) -> list[float]:
        return [float(v) for v in self.client.lrange(key, 0, -1)]

    def _count(self) -> int:
        return int(self.client.get(jobs.COUNTER) or 0)

    def _enqueue(self, n: int, *options: str) -> dict[str, Any]:
        return self.driver("enqueue", "--n", str(n), *options, timeout=120 + n / 100)

    def _fill(self, n: int, *options: str) -> None:
        """Enqueue ``n`` jobs the fastest way the system has (untimed)."""
        self._enqueue(n, *(["--bulk"] if self.info["bulk"] else []), *options)

    # -- sizing ---------------------------------------------------------------

    def size(self) -> float:
        """Set the jobs of this system's processing runs from a pilot drain: enough for
        ``seconds`` of processing. Returns the pilot's jobs/s."""
        s = self.settings
        self.client.flushall()
        bulk = ["--bulk"] if self.info["bulk"] else []
        queued = self._enqueue(PILOT_JOBS, "--within", str(PILOT_SECONDS), *bulk)["jobs"]
        roots = self.start_workers(target=0)
        try:
            deadline = time.monotonic() + STALL_SECONDS
            while self._count() == 0:
                self._check_running(roots)
                if time.monotonic() > deadline:
                    raise Timeout(f"the pilot's first job did not run within {STALL_SECONDS:.0f}s")
                time.sleep(0.01)
            began, first = time.time(), self._count()
            while self._count() < queued and time.time() - began < PILOT_SECONDS:
                time.sleep(0.01)
            rate = (self._count() - first) / (time.time() - began)
        finally:
            self.procs.stop(roots)
        self.jobs = figures.jobs_for(rate, s.seconds, s.least_jobs, s.most_jobs)
        return rate

    # -- throughput ---------------------------------------------------------

    def throughput(self) -> dict[str, Any]:
        n = self.jobs
        out: dict[str, Any] = {}
        self.client.flushall()
        single = min(n, self.settings.enqueue_jobs) if self.info["bulk"] else n
        result = self._enqueue(single)
        out["enqueue_single"] = single / result["seconds"]
        if self.info["bulk"]:
            self.client.flushall()
            result = self._enqueue(n, "--bulk")
            out["enqueue_bulk"] = n / result["seconds"]
        else:
            out["enqueue_bulk"] = "n/a"
        out.update(self._drain(n))
        if self.settings.seconds and not self.settings.jobs:
            self.jobs = figures.grown(n, out["processing_s"], self.settings.seconds, self.settings.most_jobs)
        return out

    def mixed(self) -> dict[str, Any]:
        """Half the no-op run's jobs, every 100th a nap of 100 ms: jobs/s from the first job."""
        s = self.settings
        n = max(s.nap_every, self.jobs // 2)
        self.client.flushall()
        self._fill(n, "--nap-every", str(s.nap_every), "--nap-seconds", str(s.nap_seconds))
        drained = self._drain(n)
        return {"mixed_rate": drained["processing_warm"], "mixed_jobs": n}

    def _drain(self, n: int) -> dict[str, Any]:
        """Start the workers on ``n`` queued jobs and wait until they have all been counted."""
        started = time.time()
        roots = self.start_workers(target=n)
        try:
            first, last = self._wait_processed(n, roots)
            out: dict[str, Any] = figures.usage(first, last)
            one = float(self.client.get(jobs.stamp_key(1)) or 0)
            end = float(self.client.get(jobs.stamp_key(n)) or 0)
            out["jobs"] = n
            out["processing"] = n / (end - started)
            out["processing_warm"] = (n - 1) / (end - one) if end > one else "n/a"
            out["processing_s"] = end - one
            out["startup_s"] = one - started
            out["rss_after_mb"] = self.rss(roots)
            out["processed"] = self._count()
        finally:
            self.procs.stop(roots)
        return out

    def read(self, roots: list[subprocess.Popen[bytes]]) -> Reading:
        """The count and the CPU spent so far by the workers' trees, redis-server and the rest."""
        count = self._count()
        workers = sum(cpu_seconds(pid) for pid in trees([p.pid for p in roots if p.poll() is None]))
        cpu = self.client.info("cpu")
        redis_cpu = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        times = os.times()
        own = times.user + times.system + (cpu_seconds(self.redis_pid) if self.redis_pid else 0.0)
        return Reading(at=time.time(), count=count, workers=workers, redis=redis_cpu, busy=machine_busy(),
                       ours=own + workers)

    def _wait_processed(self, n: int, roots: list[subprocess.Popen[bytes]]) -> tuple[Reading, Reading]:
        """Until the job that counted to ``n`` recorded its time; bounded by a stall and a total
        limit. Returns readings at the first job seen counted and at the end."""
        deadline = time.monotonic() + MAX_PROCESSING_SECONDS
        last_count, last_progress, last_watch = -1, time.monotonic(), 0.0
        first: Reading | None = None
        while not self.client.exists(jobs.stamp_key(n)):
            now = time.monotonic()
            count = self._count()
            if count and first is None:
                first = self.read(roots)
            if count != last_count:
                last_count, last_progress = count, now
            if now - last_progress > STALL_SECONDS:
                raise Timeout(f"stalled at {count} of {n} jobs for {STALL_SECONDS:.0f}s")
            if now > deadline:
                raise Timeout(f"only {count} of {n} jobs within {MAX_PROCESSING_SECONDS:.0f}s")
            if now - last_watch > 1.0:
                self._check_running(roots)
                self.procs.watch()
                last_watch = now
            time.sleep(0.01)
        last = self.read(roots)
        return first or last, last

    # -- warm workers -------------------------------------------------------

    def _warm_up(self) -> None:
        """Jobs one at a time until the workers run them, then a second of rest."""
        self.driver("stamps", "--key", jobs.WARM, "--n", str(WARM_JOBS), "--gap", "0.05")
        wait_for(lambda: self._llen(jobs.WARM) >= WARM_JOBS, 120, 0.02, "warm-up jobs done")
        time.sleep(1.0)
        self.procs.watch()

    def warm(self, recovery: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.client.flushall()
        roots = self.start_workers(target=0)
        try:
            self._warm_up()
            out["rss_idle_mb"] = self.rss(roots)
            attempt(out, ("latency_p50_ms", "latency_p99_ms"), self._latency)
            attempt(out, ("mixed_p50_ms", "mixed_p99_ms"), self._mixed_latency)
            if self.info["delay"]:
                attempt(out, ("sched_p50_ms", "sched_p99_ms"), self._scheduled)
            else:
                out["sched_p50_ms"] = out["sched_p99_ms"] = "n/a"
            if recovery:
                attempt(out, ("recovery_s", "recovery_note"), lambda: self._recovery(roots))
        finally:
            self.procs.stop(roots)
        return out

    def _latency(self) -> tuple[float, float]:
        s = self.settings
        return self._stamped(jobs.LATENCY, s.latency_jobs, s.latency_gap)

    def _mixed_latency(self) -> tuple[float, float]:
        """The fast jobs of a paced load in which every 100th job naps 100 ms."""
        s = self.settings
        return self._stamped(jobs.MIXED, s.mixed_jobs, s.mixed_gap, "--nap-every", str(s.nap_every),
                             "--nap-seconds", str(s.nap_seconds))

    def _stamped(self, key: str, n: int, gap: float, *options: str) -> tuple[float, float]:
        """p50 and p99 in ms of the jobs that record their lateness into ``key``."""
        self.driver("stamps", "--key", key, "--n", str(n), "--gap", str(gap), *options,
                    timeout=60 + n * gap * 2)
        stamped = n - (n // self.settings.nap_every if options else 0)
        wait_for(lambda: self._llen(key) >= stamped, 60 + n * gap, 0.02, f"{key} jobs done")
        ms = [v * 1000 for v in self._floats(key)]
        return percentile(ms, 50), percentile(ms, 99)

    def _scheduled(self) -> tuple[float, float]:
        s = self.settings
        self.driver("stamps", "--key", jobs.SCHEDULED, "--n", str(s.scheduled_jobs), "--gap", "0.02",
                    "--delay", str(s.scheduled_delay), timeout=60 + s.scheduled_jobs * 0.04)
        wait_for(lambda: self._llen(jobs.SCHEDULED) >= s.scheduled_jobs, 60 + s.scheduled_delay, 0.02,
                 "scheduled jobs done")
        ms = [v * 1000 for v in self._floats(jobs.SCHEDULED)]
        return percentile(ms, 50), percentile(ms, 99)

    def _starts(self, token: str) -> list[tuple[int, float]]:
        starts = []
        for entry in self.client.lrange(jobs.SLOW_STARTS, 0, -1):
            mark, pid, when = entry.split()
            if mark == token:
                starts.append((int(pid), float(when)))
        return starts

    def _recovery(self, roots: list[subprocess.Popen[bytes]]) -> tuple[float | str, str]:
        """Seconds from SIGKILL of the process running a slow job until the job starts again,
        and what happened to the workers meanwhile."""
        s = self.settings
        token = f"r{time.time_ns()}"
        self.driver("slow", "--token", token, "--seconds", str(s.slow_seconds))
        pid, _ = wait_for(lambda: self._starts(token), 60, 0.01, "slow job started")[0]
        ours = set(trees([p.pid for p in roots if p.poll() is None]))
        if pid not in ours:
            raise RuntimeError(f"the slow job ran in pid {pid}, not one of this system's workers")
        started = start_time(pid)
        if started is None or not alive(pid):
            raise RuntimeError(f"worker {pid} ended before it could be killed")
        role = "a started process" if pid in {p.pid for p in roots} else "a process forked by one"
        killed = time.time()  # before the kill: the orchestrator may not run again for a while after it
        os.kill(pid, signal.SIGKILL)
        try:
            after = wait_for(lambda: [t for _, t in self._starts(token)[1:] if t >= killed],
                             s.recovery_wait, 0.005, "slow job restarted")
            restarted: float | str = after[0] - killed
        except Timeout:
            restarted = f"none in {s.recovery_wait:.0f} s"
        gone = sum(1 for p in roots if p.poll() is not None)
        note = f"killed {role} (pid {pid}); {gone} of {len(roots)} started processes exited by then"
        early = [(p, round(t - killed, 4)) for p, t in self._starts(token)[1:] if t < killed]
        if early:
            note += f"; the job had also started before the kill (pid, s from kill): {early}"
        return restarted, note

    # -- long jobs ----------------------------------------------------------

    def long(self) -> dict[str, Any]:
        """On P x 2 slots with warm workers, one batch per duration, sent one per call: the
        makespan (from the first enqueue to the last job's end) over the ideal, work / slots."""
        s = self.settings
        n = s.long_jobs
        out: dict[str, Any] = {"long_slots": self.long_info["slots"]}
        self.client.flushall()
        roots = self.start_workers(target=n, info=self.long_info)
        try:
            self._warm_up()
            for seconds in s.long_seconds:
                self.client.delete(jobs.COUNTER, jobs.stamp_key(1), jobs.stamp_key(n))
                began = self._enqueue(n, "--nap-every", "1", "--nap-seconds", str(seconds))["began"]
                ended = float(wait_for(lambda: self.client.get(jobs.stamp_key(n)), 60 + 2 * n * seconds,
                                       0.005, f"{n} jobs of {seconds} s done"))
                ideal = figures.ideal_makespan(n, seconds, self.long_info["slots"])
                out[long_key(seconds)] = (ended - began) / ideal
                out[long_key(seconds) + "_s"] = ended - began
        finally:
            self.procs.stop(roots)
        return out


def attempt(out: dict[str, Any], keys: tuple[str, ...], measure: Callable[[], tuple[Any, ...]]) -> None:
    """Store what ``measure`` returns under ``keys``, or the error under each of them."""
    try:
        values = measure()
    except Exception as error:
        values = tuple(f"ERR: {type(error).__name__}: {error}" for _ in keys)
    out.update(zip(keys, values, strict=True))


def median(values: list[Any]) -> Any:
    """The median of the numbers; an error or note if there are none (the first one seen)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers:
        return statistics.median(numbers)
    return values[0] if values else None

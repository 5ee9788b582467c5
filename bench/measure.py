"""One system's measurements, seen from the orchestrator: it starts workers, drives the
system's own client through ``bench.driver`` and reads what the jobs recorded in Redis.

Two phases per repeat, each with freshly started workers on a flushed Redis:

- throughput: enqueue N no-op jobs one per call (then, where the system has it, again
  in bulk), start the workers, time until the counter reaches N; RSS at that moment;
- warm: with idle workers, RSS, latency from enqueue to start, lateness of scheduled
  jobs, and recovery of a slow job whose process is SIGKILLed.
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
from pathlib import Path
from typing import Any

import redis

from bench import jobs
from bench.procs import (
    ROOT,
    Procs,
    Timeout,
    alive,
    at_depth,
    cpu_seconds,
    descendants,
    machine_busy,
    rss_mb,
    start_time,
    wait_for,
)

STALL_SECONDS = 60.0
MAX_PROCESSING_SECONDS = 1800.0
WARM_JOBS = 20


@dataclass
class Settings:
    jobs: int = 20_000
    processes: int = 2
    threads: int = 10
    latency_jobs: int = 200
    latency_gap: float = 0.02
    scheduled_jobs: int = 50
    scheduled_delay: float = 1.0
    slow_seconds: float = 5.0
    recovery_wait: float = 60.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the two nearest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class System:
    """A job system under test, driven through its own virtualenv's interpreter."""

    def __init__(self, name: str, python: Path, procs: Procs, client: redis.Redis, redis_url: str,
                 settings: Settings, redis_pid: int = 0) -> None:
        self.name = name
        self.redis_pid = redis_pid
        self.python = python
        self.procs = procs
        self.client = client
        self.redis_url = redis_url
        self.settings = settings
        self.info: dict[str, Any] = {}

    # -- plumbing -------------------------------------------------------

    def env(self, target: int = 0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONPATH"] = str(ROOT)
        env["BENCH_REDIS_URL"] = self.redis_url
        env["BENCH_TARGET"] = str(target)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def driver(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        argv = [str(self.python), "-m", "bench.driver", self.name, *args]
        out = self.procs.run(argv, self.env(), timeout)
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def load_info(self) -> None:
        s = self.settings
        self.info = self.driver("info", "--processes", str(s.processes), "--threads", str(s.threads),
                                "--redis-url", self.redis_url, timeout=60)

    def start_workers(self, target: int) -> list[subprocess.Popen[bytes]]:
        env = self.env(target)
        return [self.procs.spawn(argv, env, f"{self.name}-worker") for argv in self.info["commands"]]

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

    # -- throughput ---------------------------------------------------------

    def throughput(self) -> dict[str, Any]:
        n = self.settings.jobs
        out: dict[str, Any] = {}
        enqueue_timeout = 120 + n / 100
        self.client.flushall()
        result = self.driver("enqueue", "--n", str(n), timeout=enqueue_timeout)
        out["enqueue_single"] = n / result["seconds"]
        if self.info["bulk"]:
            self.client.flushall()
            result = self.driver("enqueue", "--n", str(n), "--bulk", timeout=enqueue_timeout)
            out["enqueue_bulk"] = n / result["seconds"]
        else:
            out["enqueue_bulk"] = "n/a"
        busy, ours, redis_cpu = machine_busy(), self._our_cpu([]), cpu_seconds(self.redis_pid)
        started = time.time()
        roots = self.start_workers(target=n)
        try:
            self._wait_processed(n, roots)
            elapsed = time.time() - started
            out["other_cpu"] = ((machine_busy() - busy) - (self._our_cpu(roots) - ours)) / elapsed
            out["worker_cpu_us"] = self._workers_cpu(roots) / n * 1e6
            out["redis_cpu_us"] = (cpu_seconds(self.redis_pid) - redis_cpu) / n * 1e6
            first = float(self.client.get(jobs.stamp_key(1)) or 0)
            last = float(self.client.get(jobs.stamp_key(n)) or 0)
            out["processing"] = n / (last - started)
            out["processing_warm"] = (n - 1) / (last - first) if last > first else "n/a"
            out["startup_s"] = first - started
            out["rss_after_mb"] = self.rss(roots)
            out["processed"] = int(self.client.get(jobs.COUNTER) or 0)
        finally:
            self.procs.stop(roots)
        return out

    def _workers_cpu(self, roots: list[subprocess.Popen[bytes]]) -> float:
        """CPU seconds used so far by the workers' trees, start-up included."""
        pids = [pid for root in roots if root.poll() is None for pid in [root.pid, *descendants(root.pid)]]
        return sum(cpu_seconds(pid) for pid in pids)

    def _our_cpu(self, roots: list[subprocess.Popen[bytes]]) -> float:
        """CPU seconds used by redis-server, this process, and the workers' trees."""
        pids = [self.redis_pid] if self.redis_pid else []
        for root in roots:
            if root.poll() is None:
                pids += [root.pid, *descendants(root.pid)]
        times = os.times()
        return times.user + times.system + sum(cpu_seconds(pid) for pid in pids)

    def _wait_processed(self, n: int, roots: list[subprocess.Popen[bytes]]) -> None:
        """Until the job that counted to ``n`` recorded its time; bounded by a stall and a total limit."""
        deadline = time.monotonic() + MAX_PROCESSING_SECONDS
        last_count, last_progress, last_watch = -1, time.monotonic(), 0.0
        while not self.client.exists(jobs.stamp_key(n)):
            now = time.monotonic()
            count = int(self.client.get(jobs.COUNTER) or 0)
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

    # -- warm workers -------------------------------------------------------

    def warm(self, recovery: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.client.flushall()
        roots = self.start_workers(target=0)
        try:
            self.driver("stamps", "--key", jobs.WARM, "--n", str(WARM_JOBS), "--gap", "0.05")
            wait_for(lambda: self._llen(jobs.WARM) >= WARM_JOBS, 120, 0.02, "warm-up jobs done")
            time.sleep(1.0)
            self.procs.watch()
            out["rss_idle_mb"] = self.rss(roots)
            attempt(out, ("latency_p50_ms", "latency_p99_ms"), self._latency)
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
        self.driver("stamps", "--key", jobs.LATENCY, "--n", str(s.latency_jobs), "--gap", str(s.latency_gap),
                    timeout=60 + s.latency_jobs * s.latency_gap * 2)
        wait_for(lambda: self._llen(jobs.LATENCY) >= s.latency_jobs, 60, 0.02, "latency jobs done")
        ms = [v * 1000 for v in self._floats(jobs.LATENCY)]
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
        ours = {p.pid for p in roots if p.poll() is None}
        ours.update(child for root in list(ours) for child in descendants(root))
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

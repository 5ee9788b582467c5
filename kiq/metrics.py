"""Prometheus metrics recorded in every worker and supervisor process.

The master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before
anything imports prometheus_client (see kiq.cli), so every process writes its
samples there and the master's exporter (kiq.exporter) adds them up per scrape.

Labels are bounded: queues come from configuration, job classes from the
registry (anything else is ``(unknown)``), restart reasons from a fixed list.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0)
RESTART_REASONS = ("crash", "memory", "max_jobs", "reload", "timeout")
UNKNOWN_CLASS = "(unknown)"

processed = Counter("kiq_jobs_processed", "Jobs that finished running, whatever the outcome.",
                    ["queue", "class"])
failed = Counter("kiq_jobs_failed", "Jobs that raised an error (or could not run at all).",
                 ["queue", "class"])
retried = Counter("kiq_jobs_retried", "Failed jobs scheduled for another try in the retry set.",
                  ["queue", "class"])
dead = Counter("kiq_jobs_dead", "Jobs a worker sent to the dead set: out of retries, or unreadable.",
               ["queue", "class"])
recovered = Counter("kiq_jobs_recovered", "In-progress jobs put back on their queue after their worker died "
                    "(reason crash) or its host vanished (reason host_lost).", ["queue", "reason"])
duration = Histogram("kiq_job_duration_seconds", "Time a job's perform took.", ["queue", "class"],
                     buckets=DURATION_BUCKETS)
busy_threads = Gauge("kiq_busy_threads", "Processor threads running a job.", multiprocess_mode="livesum")
threads = Gauge("kiq_threads", "Processor threads in live worker processes.", multiprocess_mode="livesum")
workers = Gauge("kiq_worker_processes", "Live worker processes.", multiprocess_mode="livesum")
restarts = Counter("kiq_worker_restarts", "Worker processes replaced, by reason.", ["reason"])


_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def record(queue: str, job_class: str, seconds: float, failed_: bool, action: str) -> None:
    """Count one finished job (called by the processor threads, so the common case is two
    cached children, not four label lookups)."""
    key = (queue, job_class)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (processed.labels(queue, job_class), duration.labels(queue, job_class))
    children[0].inc()
    children[1].observe(seconds)
    if failed_:
        failed.labels(queue, job_class).inc()
    if action == "retry":
        retried.labels(queue, job_class).inc()
    elif action == "dead":
        dead.labels(queue, job_class).inc()


def mark_dead(pid: int) -> None:
    """Drop a dead process's live gauges so they stop counting."""
    path = os.environ.get(ENV)
    if path:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]

"""Prometheus metrics recorded in every worker and supervisor process, and a worker's tallies of
its jobs per class and minute (kiq.execution), which its fetcher takes to Redis.

The master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before
anything imports prometheus_client (see kiq.cli), so every process writes its
samples there and the master's exporter (kiq.exporter) adds them up per scrape.

Labels are bounded: queues come from configuration, job classes from the
registry (anything else is ``(unknown)``), restart reasons from a fixed list.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram, multiprocess
from prometheus_client.mmap_dict import MmapedDict

from kiq import log
from kiq.execution import Tallies, Tally

ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0)
RESTART_REASONS = ("crash", "memory", "max_jobs", "reload", "timeout", "unresponsive")
UNKNOWN_CLASS = "(unknown)"
ARCHIVED = ("counter", "histogram")  # the kinds whose totals outlive their process

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
threads = Gauge("kiq_threads", "Job slots (concurrency) of live workers.", multiprocess_mode="livesum")
workers = Gauge("kiq_worker_processes", "Live worker processes.", multiprocess_mode="livesum")
restarts = Counter("kiq_worker_restarts", "Worker processes replaced, by reason.", ["reason"])


class _Counts:
    """What one (queue, class) pair finished since the last flush."""

    __slots__ = ("buckets", "dead", "failed", "processed", "retried", "seconds")

    def __init__(self) -> None:
        self.processed = self.failed = self.retried = self.dead = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf


_lock = threading.Lock()
_pending: dict[tuple[str, str], _Counts] = {}
_gone = threading.Event()  # the samples folder was found gone (said once)
_tallies = Tallies()


def record(queue: str, job_class: str, seconds: float, failed_: bool, action: str) -> None:
    """Count one finished job in this process; ``flush`` writes the counts to the samples file,
    and the fetcher takes the tallies of its class (``tallies``) to Redis.

    The processor threads call this for every job. prometheus_client's multiprocess values
    take a lock and check the pid on each increment, three of them per job for the counter
    and the histogram, which made metrics a tenth of a worker's own work per no-op job.
    """
    bucket = bisect.bisect_left(DURATION_BUCKETS, seconds)  # observe()'s bucket: the first bound >= seconds
    with _lock:
        counts = _pending.get((queue, job_class))
        if counts is None:
            counts = _pending[(queue, job_class)] = _Counts()
        counts.processed += 1
        counts.seconds += seconds
        counts.buckets[bucket] += 1
        if failed_:
            counts.failed += 1
        if action == "retry":
            counts.retried += 1
        elif action == "dead":
            counts.dead += 1
        if job_class != UNKNOWN_CLASS:  # a payload that never became a job has no class to count
            _tallies.add(job_class, seconds, failed_)


def tallies() -> list[Tally]:
    """The tallies of the jobs counted since the last call (the fetcher's, before each round trip
    that acknowledges jobs)."""
    with _lock:
        return _tallies.take()


def flush() -> None:
    """Write the jobs counted since the last flush (a worker's main thread, about once a second).
    A worker whose master has exited (an orphan finishing its jobs) finds the samples folder
    gone: its counts have no reader left, and are dropped."""
    global _pending
    with _lock:
        pending, _pending = _pending, {}
    try:
        _write(pending)
    except FileNotFoundError as error:
        if not _gone.is_set():
            _gone.set()
            log.get("kiq.metrics").warning("the metrics folder is gone (its master has exited): "
                                           "job counts are no longer kept", error=str(error))


def _write(pending: dict[tuple[str, str], _Counts]) -> None:
    for labels, counts in pending.items():
        # Histogram has no way to add many observations at once: add to the sum and bucket
        # values that observe() adds to (prometheus_client's own attributes; the buckets a
        # scrape shows are checked in tests/test_metrics.py).
        histogram = duration.labels(*labels)
        histogram._sum.inc(counts.seconds)
        for bucket, amount in zip(histogram._buckets, counts.buckets, strict=True):
            if amount:
                bucket.inc(amount)
        for metric, amount in ((failed, counts.failed), (retried, counts.retried), (dead, counts.dead)):
            if amount:
                metric.labels(*labels).inc(amount)
        # last, so a scrape that counts a job processed also sees its duration and outcome
        processed.labels(*labels).inc(counts.processed)


def mark_dead(pid: int, path: str | None = None) -> None:
    """Drop a dead process's live gauges so they stop counting, and fold its counts into the
    folder's archive (``archive``); ``path`` is the samples folder, by default this process's."""
    path = path or os.environ.get(ENV)
    if path:
        with contextlib.suppress(FileNotFoundError):  # a scrape (kiq.exporter) removed them first
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        try:
            archive(pid, path)
        except Exception:  # a file prometheus_client left unreadable: the reaper goes on
            log.get("kiq.metrics").exception("could not archive a dead process's metrics", pid=pid)


def archive(pid: int, path: str) -> None:
    """Add a dead process's counters and histograms to the folder's archive files and remove
    its own: every worker that ever ran left its files, and every scrape reads them all, so a
    master that recycles workers for days would scrape ever more slowly.

    The exclusive lock keeps a scrape (``folder_lock``, shared) from reading the archive after
    the addition and the process's file before its removal, which would count it twice; and
    two supervisors (a reload's) from writing the archive at once."""
    with folder_lock(path, fcntl.LOCK_EX):
        for kind in ARCHIVED:
            dead = os.path.join(path, f"{kind}_{pid}.db")
            try:
                if os.path.getsize(dead) == 0:  # made, never sized (prometheus/client_python#1199)
                    os.remove(dead)
                    continue
                values = MmapedDict.read_all_values_from_file(dead)  # type: ignore[no-untyped-call]
            except FileNotFoundError:
                continue
            total = MmapedDict(os.path.join(path, f"{kind}_archive.db"))  # type: ignore[no-untyped-call]
            try:
                for key, value, timestamp, _ in values:
                    total.write_value(key, total.read_value(key)[0] + value, timestamp)  # type: ignore[no-untyped-call]
            finally:
                total.close()  # type: ignore[no-untyped-call]
            os.remove(dead)


@contextlib.contextmanager
def folder_lock(path: str, kind: int) -> Iterator[None]:
    """An flock on the metrics folder's lock file: shared for a scrape, exclusive to archive."""
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)

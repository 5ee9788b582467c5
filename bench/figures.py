"""The arithmetic behind the table's rows, apart from the processes that feed it: how many jobs a
processing run needs, the CPU and cores a run used, and the long jobs' makespan against the ideal."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Reading:
    """What had been spent at one moment of a processing run."""

    at: float  # time.time()
    count: int  # jobs counted so far
    workers: float  # CPU seconds of the workers' process trees (/proc)
    redis: float  # redis-server's used_cpu_user + used_cpu_sys (INFO)
    busy: float  # CPU seconds all cores spent outside idle (/proc/stat)
    ours: float  # CPU seconds of the workers, redis-server and the harness


def usage(first: Reading, last: Reading) -> dict[str, float]:
    """CPU per job and cores used by the workers and by redis-server between two readings, and the
    cores that every other process on the machine used meanwhile (how much it disturbed the run)."""
    jobs = last.count - first.count
    seconds = last.at - first.at
    if jobs <= 0 or seconds <= 0:
        raise ValueError(f"no jobs counted between the readings ({jobs} jobs in {seconds:.3f} s)")
    workers, redis = last.workers - first.workers, last.redis - first.redis
    return {
        "worker_cpu_us": workers / jobs * 1e6,
        "redis_cpu_us": redis / jobs * 1e6,
        "worker_cores": workers / seconds,
        "redis_cores": redis / seconds,
        "other_cpu": ((last.busy - first.busy) - (last.ours - first.ours)) / seconds,
    }


def jobs_for(rate: float, seconds: float, least: int, most: int) -> int:
    """Jobs for a run of at least ``seconds`` at ``rate`` jobs/s, with a quarter to spare (the first
    jobs run slower than the rest), rounded up to a hundred and kept within [least, most]."""
    return max(least, min(most, _hundreds(rate * seconds * 1.25)))


def grown(jobs: int, took: float, seconds: float, most: int) -> int:
    """The next run's jobs: more if this one's ``jobs`` took less than ``seconds``, never fewer."""
    if took <= 0 or took >= seconds:
        return jobs
    return min(most, max(jobs, _hundreds(jobs * seconds * 1.1 / took)))


def _hundreds(jobs: float) -> int:
    """``jobs`` rounded up to a hundred (a float's last bit of error does not add one)."""
    return math.ceil(round(jobs / 100, 6)) * 100


def ideal_makespan(jobs: int, seconds: float, slots: int) -> float:
    """The shortest time ``jobs`` jobs of ``seconds`` each can take on ``slots`` slots: the work
    divided by the slots, or one job's time when there are fewer jobs than slots."""
    return max(jobs * seconds / slots, seconds)

"""Chaos: 20,000 jobs through random worker SIGKILLs, reloads and a Redis crash. None may be lost.

``make chaos`` runs it at DESIGN's 100,000 jobs (``KIQ_CHAOS_JOBS``); ``make test`` keeps
20,000 so that the whole suite stays within minutes.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from conftest import run_python, wait_for

pytestmark = pytest.mark.slow

JOBS = int(os.environ.get("KIQ_CHAOS_JOBS", "20000"))
DEADLINE = max(240.0, JOBS / 250)  # seconds of chaos before the last jobs may finish in peace


@pytest.mark.timeout(DEADLINE + 240)
def test_chaos_loses_no_job(start_kiq, redis_server):
    redis_server.stop()
    redis_server.start("--appendonly", "yes", "--appendfsync", "everysec")
    r = redis_server.client()
    kiq = start_kiq(processes=2, concurrency=8, timeout=2, log={"format": "json", "level": "warning"})
    kiq.wait_workers(2)
    run_python(
        f"import sample_jobs\nsample_jobs.PidJob.perform_bulk([[str(i), 0.01] for i in range({JOBS})])\n",
        redis_server.url,
    )
    time.sleep(1.5)  # past the AOF's one-second fsync, so the crash below cannot take the enqueue with it
    rng = random.Random(int(os.environ.get("KIQ_CHAOS_SEED", "0")) or None)
    kills = reloads = 0
    redis_restarted = False
    started = time.monotonic()

    def done() -> int:
        try:
            return int(r.llen("results"))
        except Exception:
            return 0

    while done() < JOBS and time.monotonic() - started < DEADLINE:
        time.sleep(rng.uniform(0.2, 0.6))
        if not redis_restarted and done() > JOBS // 2:
            redis_server.stop()  # SIGKILL
            time.sleep(1.0)
            redis_server.start("--appendonly", "yes", "--appendfsync", "everysec")
            r = redis_server.client()
            redis_restarted = True
        elif rng.random() < 0.8:
            workers = kiq.workers()
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
                kills += 1
        else:
            kiq.signal(signal.SIGHUP)
            reloads += 1
    wait_for(lambda: len(set(r.lrange("results", 0, -1))) == JOBS, timeout=120, interval=0.5)
    elapsed = time.monotonic() - started
    results = r.lrange("results", 0, -1)
    assert set(results) == {str(i) for i in range(JOBS)}
    duplicates = len(results) - JOBS
    assert redis_restarted
    assert kills >= 5
    print(f"\nchaos: {JOBS} jobs, {kills} worker SIGKILLs, {reloads} reloads, 1 Redis SIGKILL+restart, "
          f"{duplicates} ran twice ({100 * duplicates / JOBS:.2f}%), {elapsed:.1f}s")

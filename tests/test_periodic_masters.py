"""Periodic jobs with several real masters: each tick enqueued exactly once, whoever dies."""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, descendants, sample_env, wait_for

pytestmark = pytest.mark.slow

EVERY_SECOND = {"name": "every-second", "cron": "* * * * * *", "class": "TickJob"}


def test_three_masters_fire_each_tick_exactly_once_even_when_one_dies(start_kiq, r):
    masters = [start_kiq(processes=1, concurrency=2, periodic=[EVERY_SECOND]) for _ in range(3)]
    for master in masters:
        master.wait_workers(1)
    wait_for(lambda: r.llen("ticks") >= 4, timeout=20)
    victim = masters[0]
    for pid in [victim.pid, *descendants(victim.pid)]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: r.llen("ticks") >= 10, timeout=30)
    time.sleep(1.5)
    ticks = [int(t) for t in r.lrange("ticks", 0, -1)]
    counts = collections.Counter(ticks)
    assert all(n == 1 for n in counts.values()), {t: n for t, n in counts.items() if n > 1}
    ordered = sorted(counts)
    missing = [t for t in range(ordered[0], ordered[-1] + 1) if t not in counts]
    assert missing == [], f"ticks never fired: {missing}"


def test_python_declared_entries_run_and_kiq_periodic_lists_them(start_kiq, r, redis_server):
    nightly = {"name": "nightly", "cron": "0 3 * * *", "class": "RecordJob", "args": ["night"],
               "tz": "Europe/Berlin"}
    start_kiq(processes=1, require=["sample_jobs", "periodic_sample"], periodic=[nightly])
    wait_for(lambda: "python-declared" in r.lrange("results", 0, -1), timeout=20)
    listing = subprocess.run(
        [sys.executable, "-m", "kiq", "periodic", "--json", "-r", "periodic_sample",
         "--redis-url", redis_server.url],
        cwd=ROOT, env=sample_env(redis_server.url), capture_output=True, text=True, timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["from-python"]["last"] is not None and rows["from-python"]["class"] == "RecordJob"
    for field in ("last", "next"):  # ISO 8601, as the table shows them
        assert dt.datetime.fromisoformat(rows["from-python"][field]).tzinfo is not None
        assert "T" in rows["from-python"][field]
    assert "nightly" not in rows  # not in this command's config


def test_a_file_entry_that_names_no_queue_uses_its_job_classs(start_kiq, r, tmp_path):
    (tmp_path / "report_jobs.py").write_text(textwrap.dedent("""
        import kiq, sample_jobs
        class ReportTickJob(kiq.Job):
            queue = "reports"
            def perform(self):
                sample_jobs.conn().rpush("reports", self.payload["queue"])
    """))
    start_kiq(processes=1, queues=["reports"], require=["sample_jobs", "report_jobs"],
              periodic=[{"name": "reports", "cron": "* * * * * *", "class": "ReportTickJob"}])
    wait_for(lambda: r.llen("reports") >= 2, timeout=20)
    assert set(r.lrange("reports", 0, -1)) == {"reports"}
    assert r.llen("queue:default") == 0


def test_a_quiet_master_still_enqueues_its_periodic_ticks(start_kiq, r):
    kiq = start_kiq(processes=1, concurrency=2, periodic=[EVERY_SECOND], heartbeat_interval=0.2,
                    heartbeat_ttl=5)
    kiq.wait_workers(1)
    wait_for(lambda: r.llen("ticks") >= 1, timeout=20)
    kiq.signal(signal.SIGTSTP)
    wait_for(lambda: (p := r.smembers("processes")) and all(r.hget(i, "quiet") == "true" for i in p))
    time.sleep(0.5)
    ran = r.llen("ticks")
    wait_for(lambda: r.llen("queue:default") >= 3, timeout=20)
    assert r.llen("ticks") == ran, "quiet workers took no job"
    waiting = [json.loads(raw)["periodic"]["name"] for raw in r.lrange("queue:default", 0, -1)]
    assert set(waiting) == {"every-second"}


def test_unknown_job_in_a_periodic_entry_is_a_clear_error_at_start(start_kiq):
    kiq = start_kiq(periodic=[{"name": "broken-entry", "cron": "@daily", "class": "NoSuchJob"}])
    assert kiq.wait(30) == 3
    assert "periodic.broken-entry" in kiq.log() and "NoSuchJob" in kiq.log()


def test_bad_cron_expression_is_a_config_error_naming_the_entry(start_kiq):
    kiq = start_kiq(periodic=[{"name": "typo", "cron": "61 * * * *", "class": "RecordJob"}])
    assert kiq.wait(30) == 2
    assert "periodic.typo" in kiq.log()

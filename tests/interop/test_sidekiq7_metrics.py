"""Sidekiq 7.3's own readers of its execution metrics read kiq's: ``Sidekiq::Metrics::Query`` gets
the same counts, milliseconds and histograms as kiq.api, and its Web UI's Metrics pages list kiq's
job classes. Debian has Sidekiq 6.4 only, which keeps no such metrics: these tests run the
unmodified Sidekiq 7.3 sources kept in ../shared/vendor/ruby (see its README), with Debian's Ruby
and Rack, and skip with a message where that directory is absent (a user's own clone)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, run_python, wait_for

from kiq.api import API
from kiq.execution import ClassMetrics

pytestmark = pytest.mark.slow

VENDOR = ROOT.parent / "shared" / "vendor" / "ruby"
SCRIPT = ROOT / "tests" / "interop" / "ruby" / "metrics7.rb"
CLASSES = ("RecordJob", "SlowJob", "NoRetryJob")


def sidekiq7(redis_url: str, *classes: str) -> dict:
    """What Sidekiq 7.3 reads of the metrics of ``classes`` (ruby/metrics7.rb)."""
    if not (VENDOR / "sidekiq" / "lib" / "sidekiq.rb").exists():
        pytest.skip(f"Sidekiq 7.3's sources are not at {VENDOR}: they come with the development "
                    "machine's shared/ directory, not with kiq")
    if shutil.which("ruby") is None:
        pytest.fail("ruby is not installed (make test installs ruby and ruby-rack)")
    lib = os.pathsep.join(str(VENDOR / gem / "lib") for gem in ("sidekiq", "redis-client", "connection_pool"))
    env = {**os.environ, "RUBYLIB": lib, "REDIS_URL": redis_url, "APP_ENV": "production"}
    done = subprocess.run(["ruby", str(SCRIPT), *classes], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_sidekiq_7_reads_the_metrics_kiq_records(redis_server, r, start_kiq):
    start_kiq(concurrency=4).wait_workers(1)
    run_python("import sample_jobs\n"
               "sample_jobs.RecordJob.perform_bulk([[str(i)] for i in range(20)])\n"
               "sample_jobs.SlowJob.perform_bulk([['slow', 0.26] for _ in range(4)])\n"
               "for _ in range(3): sample_jobs.NoRetryJob.perform_later()\n", redis_server.url)
    api = API(redis_server.url, namespace="")

    def counted() -> dict:
        return {each.name: each for each in api.job_metrics(minutes=10)}

    wait_for(lambda: [counted().get(name, ClassMetrics(name)).processed for name in CLASSES] == [20, 4, 3],
             timeout=30)
    kiq = counted()
    ruby = sidekiq7(redis_server.url, *CLASSES)
    for name in CLASSES:
        totals = ruby["top"][name]
        assert (totals["p"], totals.get("f", 0), totals.get("ms", 0)) == \
            (kiq[name].processed, kiq[name].failed, kiq[name].ms), name
        assert ruby["histograms"][name] == list(kiq[name].histogram), name
    assert ruby["histograms"]["SlowJob"][7] == 4 and ruby["top"]["NoRetryJob"]["f"] == 3
    listing = text(ruby["pages"]["/metrics"])
    for name in CLASSES:  # Name, Success, Failure, ...
        success = kiq[name].processed - kiq[name].failed
        assert f"{name} {success} {kiq[name].failed} " in listing, listing[-2000:]
    assert '"series":[0,0,0,0,0,0,0,4,' in ruby["pages"]["/metrics/SlowJob"]  # its histogram chart

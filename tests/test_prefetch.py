"""Prefetch end to end: a worker holds no job that another could start now, and the jobs it
does hold beyond its running ones show in the queue figures (the API, the CLI, the metrics)."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

import pytest
from conftest import free_port, run_python, wait_for, warm_up
from prometheus_client.parser import text_string_to_metric_families

from kiq.api import API, queue_summaries
from kiq.heartbeat import prefetched_by_queue

pytestmark = pytest.mark.slow


def test_long_jobs_are_shared_out_evenly_between_workers(start_kiq, redis_server, r):
    """Celery's prefetch trap: with 2 workers of 2 slots and eight 1-second jobs, a worker that
    prefetched would take most of them and the batch would take 3 s instead of 2."""
    kiq = start_kiq(processes=2, concurrency=2)
    kiq.wait_workers(2)
    run_python("import sample_jobs\nsample_jobs.PidJob.perform_bulk([[str(n), 1.0] for n in range(8)])\n",
               redis_server.url)
    wait_for(lambda: r.hlen("pids") == 8, timeout=30)
    assert sorted(Counter(r.hvals("pids")).values()) == [4, 4]


def test_long_jobs_after_very_short_ones_are_shared_out_evenly_too(start_kiq, client, redis_server, r):
    """Very short jobs size a large prefetch; the long jobs after them must not stay behind it.
    The long ones come either after the short ones ran out (the workers found the queue
    empty) or in the same backlog (a worker took some behind its running ones): both ways
    each worker runs four."""
    kiq = start_kiq(processes=2, concurrency=2)
    kiq.wait_workers(2)
    warm_up(r)
    run_python("import sample_jobs\n"
               "sample_jobs.NoopJob.perform_bulk([[]] * 3000)\n"
               "sample_jobs.PidJob.perform_bulk([[str(n), 1.0] for n in range(8)])\n",
               redis_server.url)
    wait_for(lambda: r.hlen("pids") == 8, timeout=30)
    assert sorted(Counter(r.hvals("pids")).values()) == [4, 4]


def test_prefetched_jobs_show_in_the_queue_figures(start_kiq, client, redis_server, r):
    import sample_jobs

    port = free_port()
    kiq = start_kiq(processes=1, concurrency=1, heartbeat_interval=0.2, prefetch=10,
                    metrics={"host": "127.0.0.1", "port": port})
    [worker] = kiq.wait_workers(1)
    sample_jobs.SlowJob.perform_later("blocker", 30)
    wait_for(lambda: r.llen("started") == 1)
    for n in range(5):
        sample_jobs.RecordJob.perform_later(str(n))
    api = API(redis_server.url)
    wait_for(lambda: api.queue("default").prefetched() == 5)  # as of the worker's next beat
    assert api.queue("default").size() == 0
    assert 0 < api.queue("default").latency() < 30
    [summary] = queue_summaries(api)
    assert (summary.name, summary.size, summary.prefetched) == ("default", 0, 5)
    [process] = api.processes()
    assert process.info["pid"] == worker and process.prefetched == {"default": 5}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {(s.name, tuple(s.labels.items())): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    assert found[("kiq_queue_prefetched", (("queue", "default"), ("shard", "main")))] == 5
    assert found[("kiq_queue_size", (("queue", "default"), ("shard", "main")))] == 0
    assert found[("kiq_queue_latency_seconds", (("queue", "default"), ("shard", "main")))] > 0


def test_prefetched_fields_add_up_and_junk_counts_nothing():
    fields = [json.dumps({"a": [2, 100.0], "b": [1, None]}), json.dumps({"a": [3, 50.0]}), None, "",
              "not json", json.dumps({"a": "x"}), json.dumps([1, 2]), '{"a": [1e999, 1]}', "[" * 100_000,
              '{"b": [1, 1e999]}', '{"b": [1, true]}']
    assert prefetched_by_queue(fields) == {"a": (5, 50.0), "b": (3, None)}

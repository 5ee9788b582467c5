"""The benchmark's own arithmetic (bench/): sizing a run, CPU and cores between two readings, the
long jobs' ideal makespan, reading /proc's CPU times, the drivers' mix of no-ops and naps, and
finding Ruby Sidekiq; and the sizing benchmark's quickest run, for its rows. The benchmarks
themselves (`make bench`, `make bench-sizing`) are never part of the tests."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import driver, figures, runtimes
from bench.figures import Reading
from bench.procs import ROOT, Procs, cpu_seconds, stat_cpu, stat_fields, trees


def test_usage_is_cpu_per_job_and_cores_between_two_readings() -> None:
    first = Reading(at=100.0, count=1_000, workers=10.0, redis=2.0, busy=50.0, ours=12.5)
    last = Reading(at=105.0, count=101_000, workers=17.5, redis=3.0, busy=60.5, ours=21.0)
    used = figures.usage(first, last)
    assert used["worker_cpu_us"] == pytest.approx(75.0)  # 7.5 s over 100,000 jobs
    assert used["redis_cpu_us"] == pytest.approx(10.0)
    assert used["worker_cores"] == pytest.approx(1.5)  # 7.5 s in 5 s
    assert used["redis_cores"] == pytest.approx(0.2)
    assert used["other_cpu"] == pytest.approx(0.4)  # the machine's 10.5 s less our 8.5 s, in 5 s


def test_usage_refuses_readings_without_jobs_between_them() -> None:
    reading = Reading(at=1.0, count=5, workers=0.0, redis=0.0, busy=0.0, ours=0.0)
    with pytest.raises(ValueError, match="no jobs"):
        figures.usage(reading, reading)


def test_jobs_for_a_run_of_the_wanted_length_within_bounds() -> None:
    assert figures.jobs_for(20_000, 5.0, 1_000, 400_000) == 125_000  # 5 s with a quarter to spare
    assert figures.jobs_for(163.4, 5.0, 1_000, 400_000) == 1_100  # rounded up to a hundred
    assert figures.jobs_for(50, 5.0, 1_000, 400_000) == 1_000
    assert figures.jobs_for(1e6, 5.0, 1_000, 400_000) == 400_000


def test_grown_only_grows_a_run_that_was_too_short() -> None:
    assert figures.grown(10_000, 2.5, 5.0, 400_000) == 22_000  # twice as many, and 10% more
    assert figures.grown(10_000, 6.0, 5.0, 400_000) == 10_000
    assert figures.grown(10_000, 0.0, 5.0, 400_000) == 10_000
    assert figures.grown(300_000, 2.5, 5.0, 400_000) == 400_000


def test_ideal_makespan_is_the_work_over_the_slots_and_never_less_than_one_job() -> None:
    assert figures.ideal_makespan(8, 2.0, 4) == 4.0
    assert figures.ideal_makespan(8, 2.0, 2) == 8.0
    assert figures.ideal_makespan(2, 1.0, 4) == 1.0


def test_stat_fields_skip_a_command_name_with_spaces_and_parentheses() -> None:
    line = "4242 (kiq worker 1 [3 of 10 busy) )) S 4200 4200 4200 0 -1 4194560 " + " ".join(
        ["0"] * 4 + ["250", "50", "20", "10"] + ["20", "0", "12", "0", "12345"])
    fields = stat_fields(line)
    assert fields[0] == "S" and fields[1] == "4200" and fields[19] == "12345"
    assert stat_cpu(fields) == pytest.approx(330 / os.sysconf("SC_CLK_TCK"))


def test_cpu_seconds_and_trees_read_this_process() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) >= before + 0.02
    assert trees([os.getpid()])[0] == os.getpid()


class Recorder:
    """A system module as bench.driver sees it, writing down each call instead of enqueuing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def enqueue_noop(self, n: int, bulk: bool) -> None:
        self.calls.append(("noop", n))

    def enqueue_nap(self, seconds: float) -> None:
        self.calls.append(("nap", seconds))

    def enqueue_stamp(self, key: str, value: float, delay: float) -> None:
        self.calls.append(("stamp", key))


def test_enqueue_puts_a_nap_at_every_kth_job_and_bulk_between_them() -> None:
    system = Recorder()
    args = argparse.Namespace(n=250, bulk=True, within=0.0, nap_every=100, nap_seconds=0.1)
    result = driver.enqueue(system, args)  # type: ignore[arg-type]
    assert system.calls == [("noop", 99), ("nap", 0.1), ("noop", 99), ("nap", 0.1), ("noop", 50)]
    assert result["jobs"] == 250


def test_enqueue_of_naps_only_and_of_plain_no_ops() -> None:
    naps = Recorder()
    driver.enqueue(naps, argparse.Namespace(n=3, bulk=False, within=0.0, nap_every=1,  # type: ignore[arg-type]
                                            nap_seconds=2.0))
    assert naps.calls == [("nap", 2.0)] * 3
    plain = Recorder()
    driver.enqueue(plain, argparse.Namespace(n=2_500, bulk=True, within=0.0, nap_every=0,  # type: ignore[arg-type]
                                             nap_seconds=0.0))
    assert plain.calls == [("noop", 1_000), ("noop", 1_000), ("noop", 500)]


def test_stamps_mix_naps_in_and_keep_the_pace() -> None:
    system = Recorder()
    args = SimpleNamespace(key="bench:mixed", n=10, gap=0.002, delay=0.0, nap_every=5, nap_seconds=0.1)
    started = time.perf_counter()
    driver.stamps(system, args)  # type: ignore[arg-type]
    assert time.perf_counter() - started >= 9 * 0.002
    assert [kind for kind, _ in system.calls] == ["stamp"] * 4 + ["nap"] + ["stamp"] * 4 + ["nap"]


def test_a_sidekiq_that_is_not_there_is_missing_with_the_reason(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "VENDOR", tmp_path)
    with pytest.raises(runtimes.Missing, match=r"Sidekiq 7\.3 not found in|ruby is not installed"):
        runtimes.ruby("sidekiq7", Procs(tmp_path))


def test_sidekiq_6_is_debians_with_its_own_driver(tmp_path: Path) -> None:
    runtime = runtimes.ruby("sidekiq6", Procs(tmp_path))  # make test installs ruby-sidekiq
    assert runtime.version.startswith("6.")
    assert runtime.command[-1].endswith("bench/ruby/driver.rb")
    assert "RUBYLIB" not in runtime.env


def test_the_sizing_benchmark_prints_every_row_in_its_quickest_form() -> None:
    """`make bench-sizing` in its quick form, run to the end: a row for every measurement and
    the connections of kiq's processes (the figures themselves vary with the machine)."""
    run = subprocess.run([sys.executable, "bench/sizing.py", "--quick", "--no-save", "--idle-seconds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    for row in ("| enqueue, 1 per call | 500 |", "| enqueue, bulk (1,000 per call) | 2,000 |",
                "| processing, a drain of no-op jobs (2 x 10) | 2,000 |",
                "| processing, a drain of 10 ms jobs (2 x 10) | 300 |",
                "| enqueue 1 per call + processing, 500 jobs/s |",
                "| scheduled 1 per call + processing, due one by one over 1 s |",
                "| scheduled 1 per call + processing, all due at once |",
                "| processing with one retry each | 200 |", ", 2 masters |",
                "| scheduled 1 per call, due in an hour (no processing), 1 master | 200 |",
                "| scheduled 1 per call, due in an hour (no processing), 2 masters | 200 |",
                "| Redis alone, no client", "| kiq: 1 master + 2 worker processes",
                "| kiq: 1 master + 4 worker processes",
                "| one master (scheduler, sweep, supervisor)", "| one worker process |",
                "| one sweep over 100 live processes"):
        assert row in out, f"{row!r} missing from:\n{out}"
    assert "processing, a drain of no-op jobs (2 x 10), commands per job: rpoplpush 1, lrem 1" in out
    assert "one sweep over 100 live processes, commands per sweep: exists 100, smembers 2" in out
    assert "each worker process 3 (kiq-beat 1, kiq-fetch 1, kiq-wait 1); 2 worker processes seen" in out
    assert "each worker process 3 (kiq-beat 1, kiq-fetch 1, kiq-wait 1); 4 worker processes seen" in out


def test_the_sizing_benchmark_measures_two_shards_each_server_apart() -> None:
    """`bench/sizing.py --layout shards --quick`: two redis-servers, a queue on each and `kiq
    start` with a `shards:` config; every row is measured on both servers, summed, and each
    server's share is printed (the jobs take turns over the queues, so each server gets half of
    each enqueue's commands, exactly)."""
    run = subprocess.run([sys.executable, "bench/sizing.py", "--layout", "shards", "--quick", "--no-save",
                          "--idle-seconds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    assert "## two shards (main: default; second: mailers)" in out
    for row in ("| enqueue, 1 per call | 500 | 2.00 |",
                "| processing, a drain of no-op jobs (2 x 10) | 2,000 |",
                "| processing with one retry each | 200 |",
                "| kiq: 1 master + 2 worker processes",
                "| by server (main / second) | commands | Redis CPU µs | busiest server's share",
                "| enqueue, 1 per call, per job | 1 / 1 |"):
        assert row in out, f"{row!r} missing from:\n{out}"
    assert "one Redis" not in out and ", 2 masters" not in out  # the one-Redis-only rows
    # one master runs a scheduler (2 connections) and a sweep (1) for each shard
    assert "master 6 (kiq-master 2, kiq-scheduler 4); each worker process 3" in out

"""The master's /metrics: all workers' samples added up, Redis values read per scrape, promtool-valid."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import alive, free_port, run_python, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(text: str, name: str) -> float:
    """The sum of a metric's samples over all their labels."""
    return sum(found for (sample, _), found in samples(text).items() if sample == name)


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics_kiq(start_kiq):
    port = free_port()
    kiq = start_kiq(processes=2, concurrency=3, metrics={"host": "127.0.0.1", "port": port},
                    queues=["default", "later"])
    kiq.wait_workers(2)
    wait_for(lambda: "serving metrics" in kiq.log())
    # a worker counts itself once it has registered with Redis and taken up its threads
    wait_for(lambda: value(scrape(port), "kiq_worker_processes") == 2)
    return kiq, port


def test_metrics_follow_jobs_as_they_run_and_fail(metrics_kiq, redis_server, r):
    _, port = metrics_kiq
    before = scrape(port)
    assert value(before, "kiq_jobs_processed_total", queue="default", **{"class": "RecordJob"}) == 0
    assert value(before, "kiq_worker_processes") == 2
    assert value(before, "kiq_threads") == 6
    run_python(
        "import sample_jobs\n"
        "sample_jobs.RecordJob.perform_bulk([[str(i)] for i in range(40)])\n"
        "for _ in range(3): sample_jobs.FailJob.perform_later('m')\n"
        "sample_jobs.StraightToDeadJob.perform_later()\n"
        "sample_jobs.SlowJob.perform_later('slow', 0.6)\n"
        "sample_jobs.RecordJob.set(queue='nobody-works-this').perform_bulk([['x']] * 5)\n",
        redis_server.url,
    )
    wait_for(lambda: r.llen("results") == 41 and r.zcard("retry") == 3 and r.zcard("dead") == 1)
    # workers write what they counted about once a second, a job's processed count last
    expected = {"RecordJob": 40, "SlowJob": 1, "FailJob": 3, "StraightToDeadJob": 1}
    after = wait_for(lambda: (t := scrape(port)) and all(
        value(t, "kiq_jobs_processed_total", queue="default", **{"class": name}) == count
        for name, count in expected.items()) and t)
    fail = {"queue": "default", "class": "FailJob"}
    assert value(after, "kiq_jobs_failed_total", **fail) == 3
    assert value(after, "kiq_jobs_retried_total", **fail) == 3
    assert value(after, "kiq_jobs_dead_total", queue="default", **{"class": "StraightToDeadJob"}) == 1
    assert value(after, "kiq_job_duration_seconds_count", queue="default", **{"class": "RecordJob"}) == 40
    slow = {"queue": "default", "class": "SlowJob"}
    # 0.6 s of sleep falls in the (0.5, 1.0] bucket with 0.4 s to spare on a loaded machine
    assert value(after, "kiq_job_duration_seconds_bucket", le="0.5", **slow) == 0
    assert value(after, "kiq_job_duration_seconds_bucket", le="1.0", **slow) == 1
    assert value(after, "kiq_job_duration_seconds_bucket", le="+Inf", **slow) == 1
    assert 0.6 <= value(after, "kiq_job_duration_seconds_sum", **slow) < 1.0
    assert value(after, "kiq_retry_jobs", shard="main") == 3
    assert value(after, "kiq_dead_jobs", shard="main") == 1
    assert value(after, "kiq_queue_size", queue="nobody-works-this", shard="main") == 5
    assert 0 < value(after, "kiq_queue_latency_seconds", queue="nobody-works-this", shard="main") < 60
    assert value(after, "kiq_processes", shard="main") == 2
    assert 0 < value(after, "kiq_redis_rtt_seconds", shard="main") < 1


def test_a_job_that_ends_during_a_graceful_stop_is_counted(metrics_kiq, client, r):
    """Workers write their counts once a second; the one that a stop waits for is written at the end."""
    import sample_jobs

    _, port = metrics_kiq
    sample_jobs.SlowJob.perform_later("last", 1.0)
    worker = int(wait_for(lambda: r.lindex("started", 0)).split(":")[1])
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: r.lrange("results", 0, -1) == ["last"], timeout=10)
    wait_for(lambda: value(scrape(port), "kiq_jobs_processed_total", queue="default",
                           **{"class": "SlowJob"}) == 1, timeout=10)


def test_worker_restarts_leave_no_stale_live_gauges(metrics_kiq, client, r):
    import sample_jobs

    kiq, port = metrics_kiq
    for _ in range(2):
        victim = kiq.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda victim=victim: victim not in kiq.workers() and len(kiq.workers()) == 2, timeout=15)
    sample_jobs.SlowJob.perform_later("s", 30)
    wait_for(lambda: r.llen("started") == 1)
    text = wait_for(lambda: (t := scrape(port)) and value(t, "kiq_busy_threads") == 1
                    and value(t, "kiq_worker_processes") == 2 and t, timeout=10)
    assert value(text, "kiq_threads") == 6
    assert value(text, "kiq_worker_restarts_total", reason="crash") == 2
    [worker] = [pid for pid in kiq.workers() if f"{pid}" in r.lindex("started", 0)]
    os.kill(worker, signal.SIGKILL)
    text = wait_for(lambda: (t := scrape(port)) and value(t, "kiq_jobs_recovered_total", queue="default",
                                                           reason="crash") == 1 and t, timeout=15)
    assert value(text, "kiq_worker_restarts_total", reason="crash") == 3


def samples_folder(pid: int) -> str:
    """The master's multiprocess samples folder, found through the files it holds open."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if os.path.basename(os.path.dirname(target)).startswith("kiq-metrics-"):
                return os.path.dirname(target)
    raise AssertionError(f"process {pid} holds no samples file")


def test_an_empty_samples_file_does_not_fail_the_scrape(metrics_kiq):
    """prometheus_client creates a process's file before it sizes it; a process killed in that
    moment leaves an empty file behind for good (prometheus/client_python#1199)."""
    kiq, port = metrics_kiq
    folder = samples_folder(kiq.pid)
    open(os.path.join(folder, f"counter_{2**22 + 1}.db"), "wb").close()
    text = scrape(port)
    assert value(text, "kiq_worker_processes") == 2
    assert value(text, "kiq_threads") == 6


def test_reload_counts_restarts(metrics_kiq):
    kiq, port = metrics_kiq
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: kiq.log().count("generation running") == 2, timeout=20)
    text = wait_for(
        lambda: (t := scrape(port)) and value(t, "kiq_worker_restarts_total", reason="reload") == 2 and t
    )
    wait_for(lambda: value(scrape(port), "kiq_worker_processes") == 2, timeout=20)
    assert "kiq_worker_restarts_total" in text


def test_promtool_accepts_the_live_exposition(metrics_kiq, redis_server, r):
    _, port = metrics_kiq
    run_python("import sample_jobs\nsample_jobs.RecordJob.perform_bulk([['a'], ['b']])\n"
               "sample_jobs.FailJob.perform_later('p')\n", redis_server.url)
    wait_for(lambda: r.llen("results") == 2 and r.zcard("retry") == 1)
    text = wait_for(lambda: (t := scrape(port)) and value(t, "kiq_jobs_failed_total", queue="default",
                                                          **{"class": "FailJob"}) == 1 and t)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (make test installs Debian's prometheus package)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP text"


def answers(port: int) -> bool:
    try:
        return "kiq_worker_processes" in scrape(port)
    except OSError:
        return False


def test_a_new_master_serves_metrics_while_the_killed_ones_workers_finish(start_kiq, client, r):
    """Orphaned workers finish their jobs after their master's SIGKILL; they must not keep its port."""
    import sample_jobs

    port = free_port()
    old = start_kiq(processes=1, timeout=60, metrics={"host": "127.0.0.1", "port": port})
    [worker] = old.wait_workers(1)
    wait_for(lambda: answers(port))
    sample_jobs.SlowJob.perform_later("long", 40)
    wait_for(lambda: r.llen("started") == 1)
    os.kill(old.pid, signal.SIGKILL)
    new = start_kiq(processes=1, metrics={"host": "127.0.0.1", "port": port})
    new.wait_workers(1)
    wait_for(lambda: answers(port), timeout=20)
    assert alive(worker) and r.llen("results") == 0, "the orphan is still finishing its job"


def test_a_metrics_port_taken_at_start_is_served_once_free(start_kiq):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        kiq = start_kiq(metrics={"host": "127.0.0.1", "port": port})
        kiq.wait_workers(1)
        wait_for(lambda: "cannot serve metrics yet, retrying" in kiq.log())
    wait_for(lambda: answers(port), timeout=20)
    assert kiq.log().count("cannot serve metrics") == 1
    assert "serving metrics" in kiq.log()


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(60)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_silent_or_half_sent_request_holds_up_no_scrape_and_is_closed(metrics_kiq):
    _, port = metrics_kiq
    with socket.create_connection(("127.0.0.1", port)) as idle, \
            socket.create_connection(("127.0.0.1", port)) as partial:
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # slowloris: never ends
        for _ in range(3):
            assert value(scrape(port), "kiq_worker_processes") == 2
        assert closed_by_server(idle) and closed_by_server(partial)
    assert value(scrape(port), "kiq_worker_processes") == 2


def test_a_killed_generations_workers_leave_no_live_gauges_once_gone(metrics_kiq, client, r):
    """SIGKILL a generation's supervisor: its orphaned workers stop on their own and no kiq
    process reaps them, so the scrape itself drops the gauges of processes that are gone, and
    archives their counts: their files would otherwise be read by every scrape, for ever."""
    import sample_jobs

    kiq, port = metrics_kiq
    for n in range(10):
        sample_jobs.RecordJob.perform_later(f"j{n}")
    wait_for(lambda: r.llen("results") == 10, timeout=30)
    wait_for(lambda: total(scrape(port), "kiq_jobs_processed_total") == 10, timeout=15)
    [generation] = kiq.generations()
    orphans = kiq.workers()
    folder = samples_folder(kiq.pid)
    assert owners_of(folder) & set(orphans), "the orphans-to-be counted jobs in files of their own"
    os.kill(generation, signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in orphans), timeout=30)
    wait_for(lambda: len(kiq.workers()) == 2, timeout=30)
    text = wait_for(lambda: (t := scrape(port)) and value(t, "kiq_worker_processes") == 2 and t, timeout=15)
    assert value(text, "kiq_threads") == 6
    assert not owners_of(folder) & set(orphans), "a scrape archived the counts of the workers that are gone"
    after = scrape(port)
    assert total(after, "kiq_jobs_processed_total") == 10
    assert total(after, "kiq_job_duration_seconds_count") == 10


def test_odd_queue_names_and_many_queues_leave_the_scrape_whole(metrics_kiq, r):
    """Anything that writes to Redis adds queue names: one that is not UTF-8 is left out (it
    cannot be a label value), and at most QUEUES_MAX queues have series; kiq_queues counts all."""
    from kiq.exporter import QUEUES_MAX

    _, port = metrics_kiq
    r.lpush("queue:a-waiting", "{}")  # no worker serves it
    r.rpush("kiq:suspects:a-waiting", "{}", "{}")  # jobs to run alone (kiq.recovery)
    many = [f"q{n:05}" for n in range(QUEUES_MAX + 5)]
    r.execute_command("SADD", "queues", "a-waiting", b"\xff\xfex", *many)
    text = scrape(port)
    assert value(text, "kiq_queue_size", queue="a-waiting", shard="main") == 1
    assert value(text, "kiq_queue_suspects", queue="a-waiting", shard="main") == 2
    assert value(text, "kiq_queue_suspects", queue="q00000", shard="main") == 0
    assert value(text, "kiq_queues", shard="main") == r.scard("queues")
    sizes = [key for key in samples(text) if key[0] == "kiq_queue_size"]
    assert len(sizes) == QUEUES_MAX


def test_a_scrape_of_named_series_serves_those_only(metrics_kiq):
    """Prometheus's ?name[]= filter, which prometheus_client's app asks the registry for."""
    _, port = metrics_kiq
    text = scrape_path(port, "/metrics?name[]=kiq_threads&name[]=kiq_redis_up")
    assert {key[0] for key in samples(text)} == {"kiq_threads", "kiq_redis_up"}
    assert value(text, "kiq_threads") == 6


def scrape_path(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def test_a_scrape_needs_no_fork_lock(redis_server, tmp_path, monkeypatch):
    """The scheduler holds the master's fork lock for each round; a scrape (seconds long with
    many queues) must not hold it while it reads."""
    import threading

    from kiq.connection import connect
    from kiq.exporter import Scrape
    from kiq.keys import Keys
    from kiq.metrics import ENV

    monkeypatch.setenv(ENV, str(tmp_path))
    lock = threading.Lock()
    scrape_ = Scrape({"main": (connect(redis_server.url), Keys())}, lock)
    collecting = scrape_.collect()
    next(collecting)  # the first family out, the rest still to read
    assert lock.acquire(blocking=False), "the scrape holds the fork lock while it reads"
    lock.release()
    assert len(list(collecting)) > 5


def test_replaced_workers_leave_their_counts_in_one_archive_not_a_file_each(start_kiq, client, r):
    """Each worker that ever ran left its counter and histogram files, which every scrape reads:
    a master that replaces workers for days (reloads, max_jobs, max_memory_mb) scraped ever
    more slowly. A reaped process's counts go into the folder's archive, and its files away;
    the totals stay whole."""
    import sample_jobs

    port = free_port()
    kiq = start_kiq(processes=1, concurrency=2, metrics={"host": "127.0.0.1", "port": port})
    kiq.wait_workers(1)
    folder = samples_folder(kiq.pid)
    for round_ in range(3):
        for n in range(10):
            sample_jobs.RecordJob.perform_later(f"j{round_}-{n}")
        wait_for(lambda round_=round_: r.llen("results") == 10 * (round_ + 1), timeout=30)
        [before] = kiq.workers()
        kiq.signal(signal.SIGHUP)  # a new generation; the old one's worker and supervisor go
        wait_for(lambda before=before: (w := kiq.workers()) and before not in w and len(w) == 1, timeout=30)
    text = wait_for(lambda: (t := scrape(port)) and total(t, "kiq_jobs_processed_total") == 30 and t,
                    timeout=20)
    assert total(text, "kiq_job_duration_seconds_count") == 30
    assert value(text, "kiq_worker_restarts_total", reason="reload") == 3
    owners = wait_for(lambda: (found := owners_of(folder)) and all(alive(pid) for pid in found) and found,
                      timeout=20)  # the last old generation exits after its worker
    assert len(owners) <= 4, owners  # master, supervisor, worker (and an old one still going)
    assert os.path.exists(os.path.join(folder, "counter_archive.db"))


def owners_of(folder: str) -> set[int]:
    """The processes whose own counter or histogram files the samples folder holds."""
    return {int(found[1]) for name in os.listdir(folder)
            if (found := re.fullmatch(r"(?:counter|histogram)_(\d+)\.db", name))}


def test_the_samples_folders_of_killed_masters_are_removed_at_start(tmp_path):
    """A master killed with SIGKILL leaves its samples folder in /tmp; the next start removes
    those that no process holds, and leaves a live master's (locked, here by another process),
    a folder made a moment ago (its master may not hold the lock yet) and one it cannot judge."""
    from kiq.cli import OWNER, remove_abandoned_samples

    folders = {name: tmp_path / f"kiq-metrics-{name}" for name in ("abandoned", "live", "young", "no-owner")}
    for name, folder in folders.items():
        folder.mkdir()
        if name != "no-owner":
            (folder / OWNER).touch()
        (folder / "counter_1.db").touch()
        if name != "young":
            os.utime(folder, (time.time() - 3600, time.time() - 3600))
    hold = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_SH)\nprint('locked', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folders["live"] / OWNER)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        remove_abandoned_samples(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "kiq-metrics-live", "kiq-metrics-no-owner", "kiq-metrics-young"]


def test_what_a_killed_process_left_half_made_fails_no_reaper(tmp_path, monkeypatch):
    """prometheus_client makes a process's file before it sizes it: a worker killed in that
    moment (a job that kills its worker at once) left an empty file, and reading it for the
    archive crashed the supervisor. An empty file counted nothing and goes; one cut short is
    left where it is, said, and the reaper goes on."""
    from kiq import metrics as kiq_metrics

    monkeypatch.setenv(kiq_metrics.ENV, str(tmp_path))
    (tmp_path / "counter_4242.db").write_bytes(b"")
    (tmp_path / "histogram_4243.db").write_bytes(b"\x10\x00")  # cut short: not even its size
    kiq_metrics.mark_dead(4242)
    kiq_metrics.mark_dead(4243)
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".db") == ["histogram_4243.db"]

"""Operating a running kiq: reloads, scaling, quiet, remote signals, recycling, timeouts, boot failures."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_python, title, wait_for

from kiq.retry import decode_backtrace

pytestmark = pytest.mark.slow


def enqueue_records(url: str, start: int, count: int, seconds: float = 0.0) -> None:
    run_python(
        "import sample_jobs\n"
        f"sample_jobs.PidJob.perform_bulk([[str(i), {seconds}] for i in range({start}, {start + count})])\n",
        url,
    )


def assert_exactly_once(r, count: int) -> None:
    results = r.lrange("results", 0, -1)
    assert len(results) == count, f"{len(results)} results for {count} jobs"
    assert sorted(results, key=int) == [str(i) for i in range(count)]


def rewrite(path: Path, **changes: object) -> None:
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))


def test_hup_under_load_replaces_workers_and_runs_every_job_once(start_kiq, redis_server, r, tmp_path):
    kiq = start_kiq(processes=2, concurrency=4)
    old = kiq.wait_workers(2)
    enqueue_records(redis_server.url, 0, 600, seconds=0.005)
    wait_for(lambda: r.llen("results") > 50)
    rewrite(tmp_path / "kiq-0.yml", concurrency=3)
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: len(kiq.generations()) == 1 and set(kiq.workers()).isdisjoint(old)
             and len(kiq.workers()) == 2, timeout=30)
    wait_for(lambda: r.llen("results") >= 600, timeout=60)
    time.sleep(0.5)
    assert_exactly_once(r, 600)
    new = kiq.workers()
    assert all("of 3 busy" in title(pid) or "quiet" in title(pid) for pid in new), [title(p) for p in new]
    infos = [json.loads(r.hget(ident, "info")) for ident in r.smembers("processes")]
    wait_for(lambda: {json.loads(r.hget(i, "info") or "{}").get("pid") for i in r.smembers("processes")}
             == set(new), timeout=10)
    assert all(info["concurrency"] in (3, 4) for info in infos)
    assert "generation running" in kiq.log()


def test_two_quick_hups_converge_to_one_generation(start_kiq, redis_server, r):
    kiq = start_kiq(processes=1, concurrency=4)
    kiq.wait_workers(1)
    enqueue_records(redis_server.url, 0, 400, seconds=0.005)
    kiq.signal(signal.SIGHUP)
    time.sleep(0.05)
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: r.llen("results") >= 400, timeout=60)
    wait_for(lambda: len(kiq.generations()) == 1 and len(kiq.workers()) == 1, timeout=30)
    time.sleep(0.5)
    assert_exactly_once(r, 400)
    assert "kiq master [gen 3]" in title(kiq.pid)


def test_hup_with_a_broken_config_keeps_the_running_generation(start_kiq, tmp_path, r, client):
    import sample_jobs

    kiq = start_kiq(processes=1)
    [worker] = kiq.wait_workers(1)
    (tmp_path / "kiq-0.yml").write_text("processes: [not a number\n")
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in kiq.log())
    sample_jobs.RecordJob.perform_later("still")
    wait_for(lambda: r.lrange("results", 0, -1) == ["still"])
    assert kiq.workers() == [worker]


def test_hup_loads_new_code_and_keeps_old_generation_if_the_app_breaks(start_kiq, tmp_path, r, redis_server):
    app = tmp_path / "reloadable_jobs.py"
    version = textwrap.dedent("""
        import kiq, sample_jobs
        class VersionJob(kiq.Job):
            def perform(self):
                sample_jobs.conn().rpush("versions", "{v}")
    """)
    app.write_text(version.format(v="v1"))
    enqueue = "import kiq; kiq.Client().enqueue('VersionJob')"
    kiq = start_kiq(processes=1, require=["sample_jobs", "reloadable_jobs"])
    kiq.wait_workers(1)
    run_python(enqueue, redis_server.url)
    wait_for(lambda: r.lrange("versions", 0, -1) == ["v1"])

    app.write_text(version.format(v="v2"))
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: kiq.log().count("generation running") == 2, timeout=20)
    run_python(enqueue, redis_server.url)
    wait_for(lambda: r.lrange("versions", 0, -1) == ["v1", "v2"])

    [worker] = kiq.wait_workers(1)
    app.write_text("raise RuntimeError('broken on purpose')\n")
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in kiq.log())
    assert "broken on purpose" in kiq.log()
    run_python(enqueue, redis_server.url)
    wait_for(lambda: r.lrange("versions", 0, -1) == ["v1", "v2", "v2"])
    assert kiq.workers() == [worker]


def test_ttin_ttou_and_tstp_change_what_processes_shows(start_kiq, r, client):
    import sample_jobs

    kiq = start_kiq(processes=1, heartbeat_interval=0.2, heartbeat_ttl=5)
    kiq.wait_workers(1)
    wait_for(lambda: r.scard("processes") == 1)
    kiq.signal(signal.SIGTTIN)
    kiq.wait_workers(2)
    wait_for(lambda: r.scard("processes") == 2)
    kiq.signal(signal.SIGTTOU)
    kiq.wait_workers(1)
    wait_for(lambda: r.scard("processes") == 1)
    kiq.signal(signal.SIGTSTP)
    [ident] = r.smembers("processes")
    wait_for(lambda: r.hget(ident, "quiet") == "true")
    sample_jobs.RecordJob.perform_later("not now")
    time.sleep(1.0)
    assert r.llen("results") == 0
    assert r.llen("queue:default") == 1
    assert "quiet" in title(kiq.pid)


def test_terminal_signals_sent_to_a_worker_or_a_supervisor_do_not_stop_them(start_kiq, r, client):
    """A terminal's hang-up (HUP), Ctrl-\\ (QUIT) or Ctrl-C (INT) reaches every process of
    its foreground group; only the master acts on them."""
    import sample_jobs

    kiq = start_kiq(processes=1)
    [worker] = kiq.wait_workers(1)
    [supervisor] = kiq.generations()
    for pid in (worker, supervisor):
        for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT):
            os.kill(pid, signum)
    time.sleep(1.0)
    sample_jobs.RecordJob.perform_later("after")
    wait_for(lambda: r.lrange("results", 0, -1) == ["after"])
    assert kiq.workers() == [worker]
    assert kiq.generations() == [supervisor]
    assert "exited" not in kiq.log()


def test_signals_list_quiets_and_stops_one_worker_as_the_web_ui_does(start_kiq, r):
    kiq = start_kiq(processes=2, heartbeat_interval=0.2, heartbeat_ttl=5)
    kiq.wait_workers(2)
    wait_for(lambda: r.scard("processes") == 2)
    first, second = sorted(r.smembers("processes"))
    r.lpush(f"{first}-signals", "TSTP")
    wait_for(lambda: r.hget(first, "quiet") == "true")
    assert r.hget(second, "quiet") == "false"
    r.lpush(f"{first}-signals", "TERM")
    wait_for(lambda: r.smembers("processes") == {second})
    time.sleep(1.0)
    assert len(kiq.workers()) == 1, "a worker stopped from the Web UI is not replaced"


def test_max_jobs_recycles_workers_under_load_and_loses_nothing(start_kiq, redis_server, r):
    kiq = start_kiq(processes=2, concurrency=4, max_jobs=100)
    kiq.wait_workers(2)
    enqueue_records(redis_server.url, 0, 1000, seconds=0.002)
    wait_for(lambda: r.llen("results") >= 1000, timeout=90)
    time.sleep(0.5)
    assert_exactly_once(r, 1000)
    pids = set(r.hvals("pids"))
    assert len(pids) >= 5, pids
    assert "max_jobs" in kiq.log()


def test_job_past_its_timeout_is_retried_and_its_worker_replaced(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    [worker] = kiq.wait_workers(1)
    job = sample_jobs.TimeoutJob.set(backtrace=True).perform_later(10)
    wait_for(lambda: r.zcard("retry") == 1, timeout=10)
    payload = json.loads(r.zrange("retry", 0, -1)[0])
    assert payload["jid"] == job.jid
    assert payload["error_class"] == "kiq.JobTimeout"
    assert "timeout of 0.5s" in payload["error_message"]
    frames = decode_backtrace(payload["error_backtrace"])  # where it was when the timeout hit
    assert "sample_jobs.py:" in frames[0] and frames[0].endswith(":in perform"), frames
    wait_for(lambda: (w := kiq.workers()) and worker not in w, timeout=20)
    assert r.llen("results") == 0
    lines = [json.loads(line) for line in kiq.log().splitlines() if line.startswith("{")]
    [fail] = [line for line in lines if line["event"] == "fail"]
    assert (fail["jid"], fail["class"], fail["queue"]) == (job.jid, "TimeoutJob", "default")
    assert fail["then"] == "retry"


def test_a_job_that_ends_after_its_timeout_failed_it_says_that_failure_stands(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    job = sample_jobs.TimeoutJob.perform_later(1.5)
    wait_for(lambda: r.llen("results") == 1, timeout=20)  # it ran to its end in the abandoned thread
    wait_for(lambda: "ended after its timeout" in kiq.log())
    lines = [json.loads(line) for line in kiq.log().splitlines() if line.startswith("{")]
    mine = [line["event"] for line in lines if line.get("jid") == job.jid]
    assert mine == ["fail", "ended after its timeout had failed it; that failure stands"]  # no "done"
    assert r.zcard("retry") == 1 and int(r.get("stat:processed") or 0) == 1


def test_master_exits_non_zero_when_every_worker_dies_booting(start_kiq, tmp_path):
    (tmp_path / "fork_bomb_guard.py").write_text(
        "import os\nos.register_at_fork(after_in_child=lambda: os._exit(7))\n"
    )
    kiq = start_kiq(processes=2, require=["sample_jobs", "fork_bomb_guard"])
    assert kiq.wait(60) == 4
    assert "every worker failed to boot" in kiq.log()


def test_master_restarts_a_dead_generation_and_keeps_trying_while_the_app_is_broken(start_kiq, tmp_path, r,
                                                                                    client):
    import sample_jobs

    app = tmp_path / "fragile_jobs.py"
    app.write_text("import sample_jobs\n")
    kiq = start_kiq(processes=1, require=["sample_jobs", "fragile_jobs"])
    kiq.wait_workers(1)
    [generation] = kiq.generations()
    app.write_text("raise RuntimeError('broken for now')\n")
    os.kill(generation, signal.SIGKILL)
    wait_for(lambda: kiq.log().count("trying again") >= 2, timeout=30)
    assert kiq.process.poll() is None
    app.write_text("import sample_jobs\n")
    wait_for(lambda: len(kiq.workers()) == 1, timeout=60)
    sample_jobs.RecordJob.perform_later("back")
    wait_for(lambda: r.lrange("results", 0, -1) == ["back"], timeout=15)

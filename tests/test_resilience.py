"""Losing things: a whole host, a job that kills its worker, Redis itself."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis
from conftest import alive, descendants, free_port, run_python, wait_for

from kiq.retry import decode_backtrace

pytestmark = pytest.mark.slow


def test_other_master_requeues_jobs_of_a_vanished_host(start_kiq, client, r):
    import sample_jobs

    fast = {"heartbeat_interval": 0.3, "heartbeat_ttl": 2}
    doomed = start_kiq(processes=1, concurrency=2, **fast)
    [doomed_worker] = doomed.wait_workers(1)
    # Long enough to be still running when the second master has started, on a slow machine too.
    for n in range(2):
        sample_jobs.SlowJob.perform_later(f"j{n}", 5.0)
    wait_for(lambda: r.llen("started") == 2)
    survivor = start_kiq(processes=1, concurrency=2, **fast)
    [survivor_worker] = survivor.wait_workers(1)
    for pid in [doomed.pid, *descendants(doomed.pid)]:
        os.kill(pid, signal.SIGKILL)
    lost_at = time.monotonic()
    wait_for(lambda: r.llen("started") == 4, timeout=15)
    noticed = time.monotonic() - lost_at
    wait_for(lambda: sorted(r.lrange("results", 0, -1)) == ["j0", "j1"], timeout=15)
    rerun = r.lrange("started", 2, -1)
    assert sorted(rerun) == [f"j0:{survivor_worker}", f"j1:{survivor_worker}"]
    assert noticed < 2 + 2, f"requeued {noticed:.1f}s after the host vanished (TTL 2s)"
    wait_for(lambda: all(f":{doomed_worker}:" not in p for p in r.smembers("processes")))
    assert not [k for k in r.keys("kiq:wip:*") if f":{doomed_worker}:" in k]
    assert "heartbeat expired" in survivor.log()


def test_job_that_kills_its_worker_three_times_goes_to_dead(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    job = sample_jobs.KillerJob.perform_later()
    wait_for(lambda: r.zcard("dead") == 1, timeout=30)
    dead = json.loads(r.zrange("dead", 0, -1)[0])
    assert dead["jid"] == job.jid
    assert dead["error_class"] == "kiq.PoisonPill"
    assert len(r.lrange("attempts", 0, -1)) == 3
    assert r.llen("queue:default") == 0
    [line] = [json.loads(line) for line in kiq.log().splitlines() if "poison pills to the dead set" in line]
    assert line["level"] == "error" and line["jids"] == [f"{job.jid} KillerJob"]  # said, not buried silently
    sample_jobs.RecordJob.perform_later("alive")
    wait_for(lambda: r.lrange("results", 0, -1) == ["alive"], timeout=10)
    assert kiq.process.poll() is None


def test_a_job_running_beside_a_pill_that_sigkills_its_worker_is_not_buried_with_it(start_kiq, client, r):
    """A SIGKILL names no culprit, so both jobs are charged at each crash, and requeued together
    they are taken together again. At the limit each runs alone: the slow job finishes, and
    the pill, alone at its fourth crash, goes to dead by itself."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    slow = sample_jobs.SlowJob.perform_later("slow", 2).jid
    wait_for(lambda: r.llen("started") == 1)
    pill = sample_jobs.SlowKillerJob.perform_later(0.5).jid
    wait_for(lambda: r.lrange("results", 0, -1) == ["slow"] and r.zcard("dead") == 1, timeout=60)
    [dead] = [json.loads(raw) for raw in r.zrange("dead", 0, -1)]
    assert (dead["jid"], dead["error_class"]) == (pill, "kiq.PoisonPill")
    assert r.llen("attempts") == 4  # three crashes beside the slow job, then one alone
    alone = [json.loads(line) for line in kiq.log().splitlines() if "running a suspect alone" in line]
    assert sorted(line["jid"] for line in alone) == sorted([pill, slow])
    assert not r.exists("kiq:suspects:default") and r.llen("queue:default") == 0


def test_a_suspect_nested_too_deep_to_read_goes_to_dead_and_the_worker_goes_on(start_kiq, client, r):
    """Anything with access to Redis may write to a suspects list: an entry that json cannot
    read (nested too deep) killed the fetcher thread that logged its jid, and the worker beat
    on without taking another job."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    r.rpush("kiq:suspects:default", "[" * 100_000 + "]" * 100_000)
    sample_jobs.RecordJob.perform_bulk([[str(n)] for n in range(10)])
    wait_for(lambda: r.llen("results") == 10 and r.zcard("dead") == 1, timeout=20)
    [dead] = [json.loads(raw) for raw in r.zrange("dead", 0, -1)]
    assert dead["error_class"] == "kiq.InvalidPayloadError" and not r.exists("kiq:suspects:default")


def test_a_worker_whose_fetcher_thread_dies_is_replaced_and_loses_nothing(start_kiq, client, r, tmp_path):
    """A bug in kiq that ends the fetcher thread (here an app module that makes it raise once,
    when the test arms it) left a worker that beat on and never took a job again. It now stops,
    its jobs go back, and its supervisor starts another."""
    import sample_jobs

    (tmp_path / "fetcher_breaker.py").write_text(
        "import pathlib\n"
        "from kiq import fetch\n"
        "ARMED = pathlib.Path(__file__).with_name('armed')\n"
        "receive = fetch.Fetcher._receive\n"
        "def breaking(self, jobs, idle):\n"
        "    if jobs and ARMED.exists():\n"
        "        ARMED.unlink()\n"
        "        raise RuntimeError('a bug in the fetcher')\n"
        "    return receive(self, jobs, idle)\n"
        "fetch.Fetcher._receive = breaking\n")
    kiq = start_kiq(processes=1, concurrency=2, require=["sample_jobs", "fetcher_breaker"])
    [first] = kiq.wait_workers(1)
    (tmp_path / "armed").touch()
    tokens = [str(n) for n in range(50)]
    sample_jobs.RecordJob.perform_bulk([[token] for token in tokens])
    wait_for(lambda: not (tmp_path / "armed").exists(), timeout=10)  # the fetcher raised
    wait_for(lambda: first not in kiq.workers() and set(r.lrange("results", 0, -1)) == set(tokens),
             timeout=30)
    lines = [json.loads(line) for line in kiq.log().splitlines() if line.startswith("{")]
    assert any(line["event"] == "the fetcher thread died; this worker stops and its supervisor starts another"
               for line in lines)
    assert len(kiq.wait_workers(1)) == 1


def test_a_segfault_charges_only_the_job_whose_thread_crashed(start_kiq, client, r):
    """A slow job runs beside a job that segfaults its worker three times: faulthandler names
    the crashing thread, so the segfaulting job goes to dead and the slow one, restarted with
    it, is never charged. The supervisor logs where the segfault happened."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    slow = sample_jobs.SlowJob.perform_later("slow", 8).jid
    wait_for(lambda: r.llen("started") == 1)
    pill = sample_jobs.SegfaultJob.perform_later().jid
    wait_for(lambda: r.zcard("dead") == 1, timeout=30)
    dead = json.loads(r.zrange("dead", 0, -1)[0])
    assert (dead["jid"], dead["error_class"]) == (pill, "kiq.PoisonPill")
    assert dead["error_message"].endswith("; the last crash: Segmentation fault in its thread")
    frames = decode_backtrace(dead["error_backtrace"])  # as Sidekiq's Web UI shows it
    assert frames[0].endswith(":in string_at") and frames[1].endswith(":in perform"), frames
    assert r.llen("attempts") == 3
    assert r.get(f"kiq:recoveries:{slow}") is None
    wait_for(lambda: r.lrange("results", 0, -1) == ["slow"], timeout=30)
    crashes = [line for line in kiq.log().splitlines() if "worker crashed" in line]
    assert len(crashes) == 3
    assert "Segmentation fault" in crashes[0] and "in perform" in crashes[0], crashes[0]


def test_a_crash_charges_towards_poison_only_the_jobs_that_were_running(start_kiq, client, r):
    """Both slots run slow jobs from ``critical``; quick jobs from ``default`` wait in the
    worker's buffer. A SIGKILL charges the two slow jobs, never the waiting ones, although
    they are the oldest of their own in-progress list."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2, queues=["critical", "default"], prefetch=10)
    [worker] = kiq.wait_workers(1)
    slow = [sample_jobs.SlowJob.set(queue="critical").perform_later(f"s{n}", 30).jid for n in range(2)]
    wait_for(lambda: r.llen("started") == 2)
    quick = [sample_jobs.RecordJob.perform_later(f"q{n}").jid for n in range(6)]
    wait_for(lambda: r.llen(f"kiq:wip:{identity_of(r, worker)}|default") == 6)
    os.kill(worker, signal.SIGKILL)
    # One script requeues both lists: once the slow jobs are counted, so would the others be.
    wait_for(lambda: [r.get(f"kiq:recoveries:{jid}") for jid in slow] == ["1", "1"])
    assert [r.get(f"kiq:recoveries:{jid}") for jid in quick] == [None] * 6


def test_a_worker_paused_past_its_ttl_starts_none_of_the_jobs_it_had_prefetched(start_kiq, client, r):
    """SIGSTOP longer than the heartbeat TTL: the master sweeps the worker's jobs back to their
    queue. Resumed, the worker must not start the jobs it had prefetched as well."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=1, heartbeat_interval=0.3, heartbeat_ttl=2, prefetch=10)
    [worker] = kiq.wait_workers(1)
    identity = identity_of(r, worker)
    sample_jobs.SlowJob.perform_later("slow", 5.0)  # still running when the worker stops
    wait_for(lambda: r.llen("started") == 1)
    for n in range(5):
        sample_jobs.RecordJob.perform_later(f"q{n}")
    wait_for(lambda: r.llen(f"kiq:wip:{identity}|default") == 6)  # one running, five prefetched
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_for(lambda: r.exists(f"kiq:swept:{identity}"), timeout=20)
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_for(lambda: r.llen("results") >= 7, timeout=20)  # the running job runs again, once
    time.sleep(1.0)  # long enough for a second run of any of them
    results = r.lrange("results", 0, -1)
    assert sorted(results) == ["q0", "q1", "q2", "q3", "q4", "slow", "slow"], results
    assert "another master requeued its jobs" in kiq.log()
    assert kiq.workers() == [worker]


def test_a_redis_restart_longer_than_the_ttl_requeues_no_running_job(start_kiq, client, redis_server, r):
    """Redis down for longer than the heartbeat TTL, then back with its data: every heartbeat
    has expired, yet no master sweeps the live workers of another, so no job runs twice and
    none is counted towards the poison-pill limit."""
    import sample_jobs

    persistent = ("--appendonly", "yes", "--appendfsync", "always")
    redis_server.stop()
    redis_server.start(*persistent)
    fast = {"heartbeat_interval": 0.3, "heartbeat_ttl": 2}
    first = start_kiq(processes=1, concurrency=4, **fast)
    first.wait_workers(1)
    second = start_kiq(processes=1, concurrency=4, **fast)
    second.wait_workers(1)
    jids = [sample_jobs.SlowJob.perform_later(f"s{n}", 12).jid for n in range(4)]
    wait_for(lambda: r.llen("started") == 4, timeout=15)
    redis_server.stop()
    time.sleep(4)  # twice the TTL
    redis_server.start(*persistent)
    wait_for(lambda: r.llen("results") == 4, timeout=30)
    assert r.llen("started") == 4, r.lrange("started", 0, -1)
    assert [r.get(f"kiq:recoveries:{jid}") for jid in jids] == [None] * 4
    for kiq in (first, second):
        assert "requeued jobs of processes whose heartbeat expired" not in kiq.log()


@pytest.mark.parametrize("refusal", ["replica", "noreplicas"])
def test_a_redis_that_refuses_writes_longer_than_the_ttl_gets_no_live_worker_swept(start_kiq, client, r,
                                                                                   refusal):
    """Redis answers reads but refuses writes (it became a replica: READONLY; too few replicas:
    NOREPLICAS) for longer than the heartbeat TTL: every heartbeat expires, as in an outage, and
    no master may sweep until the workers have had a whole TTL to beat again. The workers are
    held for a second as writes come back, so that a master that sweeps at once finds them so."""
    import sample_jobs

    fast = {"heartbeat_interval": 0.3, "heartbeat_ttl": 3}
    first = start_kiq(processes=1, concurrency=4, **fast)
    second = start_kiq(processes=1, concurrency=4, queues=["other"], **fast)
    workers = [*first.wait_workers(1), *second.wait_workers(1)]
    jids = [sample_jobs.SlowJob.perform_later(f"s{n}", 10).jid for n in range(4)]
    wait_for(lambda: r.llen("started") == 4, timeout=15)
    if refusal == "replica":
        r.replicaof("127.0.0.1", str(free_port()))  # a primary that never answers: the data stays
    else:
        r.config_set("min-replicas-to-write", 1)
    time.sleep(4)  # longer than the TTL
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        if refusal == "replica":
            r.replicaof("NO", "ONE")
        else:
            r.config_set("min-replicas-to-write", 0)
        time.sleep(1.3)  # a master that sweeps as soon as it may write does so meanwhile
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: r.llen("results") == 4, timeout=30)
    time.sleep(1)  # a second run of a swept job would have started by now
    assert r.llen("started") == 4, r.lrange("started", 0, -1)
    assert [r.get(f"kiq:recoveries:{jid}") for jid in jids] == [None] * 4
    for kiq in (first, second):
        assert "requeued jobs of processes whose heartbeat expired" not in kiq.log()


def test_connections_killed_under_idle_workers_run_every_job_once(start_kiq, client, r, tmp_path):
    """Killing the workers' connections (``CLIENT KILL``, a proxy restarting) loses replies, so
    a worker gives back the jobs Redis holds for it that it does not hold: a watcher's move
    that had landed but was not filed yet was given back and run here too."""
    import sample_jobs

    kiq = start_kiq(processes=2, concurrency=4)
    kiq.wait_workers(2)
    path, jobs = tmp_path / "runs", 1200
    killed = 0
    for n in range(jobs):
        sample_jobs.FileJob.perform_later(str(path), f"t{n}")
        if n % 20 == 0:  # about every 0.1 s, while jobs trickle in at about 200/s
            for each in r.client_list():
                if each["name"].startswith(("kiq-fetch-", "kiq-wait-")):
                    killed += bool(r.client_kill_filter(_id=each["id"]))
        time.sleep(0.005)
    wait_for(lambda: path.exists() and len(path.read_text().split()) >= jobs, timeout=60)
    time.sleep(1)  # a second run of any of them would have been written by now
    runs = path.read_text().split()
    assert len(runs) == len(set(runs)) == jobs, sorted(t for t in set(runs) if runs.count(t) > 1)
    assert killed > 50


def test_a_worker_says_it_put_back_the_jobs_redis_lost_and_runs_each_once(start_kiq, client, r):
    """Redis lost its data (a flush, a restart without persistence) while jobs ran: the worker
    holds the only copies, puts them back into its in-progress list, says so, and acknowledges
    each once; none runs again."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2, heartbeat_interval=0.3, heartbeat_ttl=2)
    kiq.wait_workers(1)
    for n in range(2):
        sample_jobs.SlowJob.perform_later(f"s{n}", 2)
    wait_for(lambda: r.llen("started") == 2)
    r.flushall()
    wait_for(lambda: "redis had lost the jobs this worker holds" in kiq.log(), timeout=10)
    wait_for(lambda: r.llen("results") == 2, timeout=10)
    wait_for(lambda: not any(r.llen(key) for key in r.keys("kiq:wip:*")), timeout=5)
    time.sleep(1)  # a job run again would have started by now
    assert r.llen("started") == 0
    line = next(json.loads(line) for line in kiq.log().splitlines() if "redis had lost the jobs" in line)
    assert line["jobs"] == 2


def test_a_vanished_host_s_list_missing_from_the_registry_is_still_recovered(start_kiq, client, r):
    """A worker swept while paused lost its registry entry; it died with its host before its
    next beat put it back. The next master to start finds the list by its key."""
    import sample_jobs

    fast = {"heartbeat_interval": 0.3, "heartbeat_ttl": 2}
    doomed = start_kiq(processes=1, concurrency=2, **fast)
    doomed.wait_workers(1)
    for n in range(2):
        sample_jobs.SlowJob.perform_later(f"j{n}", 30)
    wait_for(lambda: r.llen("started") == 2)
    everyone = [doomed.pid, *descendants(doomed.pid)]
    for pid in everyone:
        os.kill(pid, signal.SIGSTOP)
    r.delete("kiq:wip")
    for pid in everyone:
        os.kill(pid, signal.SIGKILL)
    survivor = start_kiq(processes=1, concurrency=2, **fast)
    survivor.wait_workers(1)
    wait_for(lambda: r.llen("started") == 4, timeout=20)
    assert "requeued jobs of processes whose heartbeat expired" in survivor.log()


def test_a_redis_at_maxmemory_gets_no_live_worker_swept(start_kiq, client, r, tmp_path):
    """At maxmemory with noeviction, Redis refuses every write that may grow memory. A worker's
    liveness must not hang on one of them: its heartbeat and its fetches extend its entry first,
    which Redis accepts, so it is never swept and no job runs twice."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2, heartbeat_interval=0.3, heartbeat_ttl=2)
    kiq.wait_workers(1)
    path = tmp_path / "runs"
    jobs = 300
    sample_jobs.FileJob.perform_bulk([[str(path), f"t{n}", 0.03] for n in range(jobs)])  # 4.5 s of work
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.lpush("queue:default", "refused")
        wait_for(lambda: path.exists() and len(path.read_text().split()) >= jobs, timeout=60)
        time.sleep(2.5)  # past the TTL: a sweep would have requeued what the worker held
    finally:
        r.config_set("maxmemory", 0)
    runs = path.read_text().split()
    assert len(runs) == len(set(runs)) == jobs
    assert "requeued jobs of processes whose heartbeat expired" not in kiq.log()


def test_a_worker_starts_and_works_while_redis_is_at_maxmemory(start_kiq, client, r, tmp_path):
    """A plain SADD is refused at maxmemory; a worker starting then must still register and work."""
    import sample_jobs

    path = tmp_path / "runs"
    sample_jobs.FileJob.perform_bulk([[str(path), f"t{n}"] for n in range(20)])
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        kiq = start_kiq(processes=1, concurrency=2)
        kiq.wait_workers(1)
        wait_for(lambda: path.exists() and len(path.read_text().split()) == 20, timeout=30)
    finally:
        r.config_set("maxmemory", 0)


def identity_of(r, pid: int) -> str:
    return wait_for(lambda: next((p for p in r.smembers("processes") if f":{pid}:" in p), None))


def test_redis_restart_under_load_loses_nothing(start_kiq, redis_server, r):
    redis_server.stop()
    redis_server.start("--appendonly", "yes", "--appendfsync", "always")
    kiq = start_kiq(processes=2, concurrency=4)
    kiq.wait_workers(2)
    total = 1500
    run_python(
        f"import sample_jobs\nsample_jobs.PidJob.perform_bulk([[str(i), 0.002] for i in range({total})])\n",
        redis_server.url,
    )
    wait_for(lambda: r.llen("results") > 300, timeout=30)
    redis_server.stop()  # SIGKILL: a crash, not a clean shutdown
    time.sleep(2.0)
    assert kiq.process.poll() is None
    assert len(kiq.workers()) == 2
    redis_server.start("--appendonly", "yes", "--appendfsync", "always")
    r = redis_server.client()
    wait_for(lambda: len(set(r.lrange("results", 0, -1))) == total, timeout=60)
    time.sleep(1.0)
    results = r.lrange("results", 0, -1)
    assert set(results) == {str(i) for i in range(total)}
    duplicates = len(results) - total
    assert duplicates <= 2 * 8 * 2, f"{duplicates} jobs ran twice"
    wait_for(lambda: sum(r.llen(k) for k in r.keys("kiq:wip:*")) == 0)
    assert r.llen("queue:default") == 0
    log = kiq.log()
    assert 1 <= log.count("redis unavailable") <= 12, log.count("redis unavailable")
    assert "redis available again" in log


def test_a_worker_waiting_for_redis_exits_when_its_supervisor_dies(start_kiq, redis_server):
    kiq = start_kiq(processes=1)
    [first] = kiq.wait_workers(1)
    redis_server.stop()
    os.kill(first, signal.SIGKILL)
    [second] = wait_for(lambda: [w for w in kiq.workers() if w != first], timeout=15)
    for pid in [kiq.pid, *kiq.generations()]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(second), timeout=15)


def test_a_closed_log_pipe_fails_no_job_and_stops_no_stop(redis_server, client, r, tmp_path):
    """kiq's output piped to a reader that goes away (``| head``, a log shipper restarting):
    every job still succeeds, and TERM still stops everything, exit 0."""
    import subprocess
    import sys
    import uuid

    import sample_jobs
    import yaml
    from conftest import ROOT, TOKEN, Kiq, sample_env

    config = tmp_path / "kiq.yml"
    config.write_text(yaml.safe_dump({"redis_url": redis_server.url, "require": ["sample_jobs"],
                                      "processes": 1, "concurrency": 4, "metrics": {"port": 0},
                                      "log": {"format": "json", "level": "info"}}))
    token = uuid.uuid4().hex
    process = subprocess.Popen([sys.executable, "-m", "kiq", "start", "-c", str(config)], cwd=ROOT,
                               env={**sample_env(redis_server.url, tmp_path), TOKEN: token},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kiq = Kiq(process, tmp_path / "unused.log", token)
    try:
        assert process.stdout is not None
        while b"worker started" not in process.stdout.readline():
            pass
        process.stdout.close()  # every line written from now on fails with EPIPE
        for n in range(20):
            sample_jobs.RecordJob.perform_later(f"j{n}")
        wait_for(lambda: r.llen("results") == 20)
        wait_for(lambda: int(r.get("stat:processed") or 0) == 20)
        assert r.zcard("dead") == 0 and r.zcard("retry") == 0
        assert int(r.get("stat:failed") or 0) == 0
        workers = kiq.workers()
        kiq.signal(signal.SIGTERM)
        assert kiq.wait(30) == 0
        assert not [pid for pid in workers if alive(pid)]
        assert r.scard("processes") == 0
    finally:
        kiq.kill_all()

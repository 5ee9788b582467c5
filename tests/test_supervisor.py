"""The master and its workers as real processes: fork, signals, SIGKILL, exactly-once delivery."""

from __future__ import annotations

import base64
import json
import os
import signal
import textwrap
import time
import urllib.request

import pytest
import redis
from conftest import free_port, run_python, wait_for

pytestmark = pytest.mark.slow


def wip_total(r) -> int:
    return sum(r.llen(key) for key in r.keys("kiq:wip:*"))


def test_thousand_jobs_from_another_process_run_exactly_once(start_kiq, redis_server, r):
    kiq = start_kiq(processes=2, concurrency=5)
    run_python(
        "import sample_jobs\n"
        "for i in range(500): sample_jobs.RecordJob.perform_later(str(i))\n"
        "sample_jobs.RecordJob.perform_bulk([[str(i)] for i in range(500, 1000)])\n",
        redis_server.url,
    )
    wait_for(lambda: r.llen("results") >= 1000, timeout=60)
    time.sleep(0.3)
    results = r.lrange("results", 0, -1)
    assert sorted(results, key=int) == [str(i) for i in range(1000)]
    wait_for(lambda: r.get("stat:processed") == "1000")
    assert r.llen("queue:default") == 0
    assert wip_total(r) == 0
    kiq.signal(signal.SIGTERM)
    assert kiq.wait() == 0


def test_sigkilled_worker_job_runs_again_and_nothing_stays_in_progress(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    [first] = kiq.wait_workers(1)
    sample_jobs.SlowJob.perform_later("slow", 1.5)
    wait_for(lambda: r.llen("started") == 1)
    assert wip_total(r) == 1
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: r.llen("started") == 2, timeout=10)
    requeue_seconds = time.monotonic() - killed_at
    [second] = kiq.wait_workers(1)
    assert second != first
    wait_for(lambda: r.lrange("results", 0, -1) == ["slow"], timeout=10)
    assert r.lrange("started", 0, -1) == [f"slow:{first}", f"slow:{second}"]
    wait_for(lambda: wip_total(r) == 0)
    assert requeue_seconds < 5
    assert "killed by SIGKILL" in kiq.log()


def test_term_lets_running_jobs_finish_within_the_timeout(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=3, timeout=5)
    kiq.wait_workers(1)
    for n in range(3):
        sample_jobs.SlowJob.perform_later(f"s{n}", 1.0)
    wait_for(lambda: r.llen("started") == 3)
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(20) == 0
    assert sorted(r.lrange("results", 0, -1)) == ["s0", "s1", "s2"]
    assert r.llen("queue:default") == 0
    assert wip_total(r) == 0
    assert r.scard("processes") == 0


def test_term_requeues_jobs_still_running_after_the_timeout(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2, timeout=1)
    kiq.wait_workers(1)
    job = sample_jobs.SlowJob.perform_later("long", 30)
    wait_for(lambda: r.llen("started") == 1)
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(20) == 0
    assert r.llen("results") == 0
    queued = [json.loads(raw) for raw in r.lrange("queue:default", 0, -1)]
    assert [j["jid"] for j in queued] == [job.jid]
    assert wip_total(r) == 0


def test_jobs_taken_but_not_started_go_back_on_stop(start_kiq, client, r):
    """With one thread busy, prefetched jobs wait in memory-and-Redis; a stop returns them, in order."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=1, timeout=0.5, prefetch=10)
    kiq.wait_workers(1)
    sample_jobs.SlowJob.perform_later("blocker", 30)
    wait_for(lambda: r.llen("started") == 1)
    jids = [sample_jobs.RecordJob.perform_later(str(n)).jid for n in range(5)]
    wait_for(lambda: wip_total(r) == 6)  # the five are prefetched: the stop must give them back
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(20) == 0
    queued = [json.loads(raw)["jid"] for raw in reversed(r.lrange("queue:default", 0, -1))]
    assert sorted(queued[1:]) == sorted(jids)
    assert queued[1:] == jids, "given-back jobs keep their FIFO order"
    assert wip_total(r) == 0


def test_weighted_queues_are_taken_in_proportion(start_kiq, redis_server, r):
    run_python(
        "import sample_jobs\n"
        "for q in ('critical', 'default'):\n"
        "    sample_jobs.OrderJob.set(queue=q).perform_bulk([[q]] * 400)\n",
        redis_server.url,
    )
    start_kiq(processes=1, concurrency=1, queues=[["critical", 3], ["default", 1]])
    wait_for(lambda: r.llen("order") >= 300, timeout=30)
    first = r.lrange("order", 0, 299)
    share = first.count("critical") / len(first)
    assert 0.65 <= share <= 0.85, share


def test_strict_queues_drain_in_order(start_kiq, redis_server, r):
    run_python(
        "import sample_jobs\n"
        "for q in ('low', 'high'):\n"
        "    sample_jobs.OrderJob.set(queue=q).perform_bulk([[q]] * 100)\n",
        redis_server.url,
    )
    start_kiq(processes=1, concurrency=1, queues=["high", "low"])  # completion order = fetch order
    wait_for(lambda: r.llen("order") == 200, timeout=30)
    assert r.lrange("order", 0, -1) == ["high"] * 100 + ["low"] * 100


def test_scheduled_job_runs_when_due_and_never_before(start_kiq, client, r):
    import sample_jobs

    start_kiq()
    due = time.time() + 1.5
    sample_jobs.TimedJob.set(wait_until=due).perform_later("t")
    assert r.zcard("schedule") == 1
    ran_at = float(wait_for(lambda: r.hget("ran_at", "t"), timeout=10))
    assert due <= ran_at < due + 1.0
    assert r.zcard("schedule") == 0


def test_failing_job_is_retried_with_sidekiq_fields_then_dies(start_kiq, client, r):
    import sample_jobs

    start_kiq()
    before = time.time()
    job = sample_jobs.FailJob.perform_later("f")
    wait_for(lambda: r.zcard("retry") == 1)
    [(raw, score)] = r.zrange("retry", 0, -1, withscores=True)
    payload = json.loads(raw)
    assert payload["jid"] == job.jid
    assert payload["error_class"] == "ValueError"
    assert payload["error_message"] == "boom f"
    assert payload["retry_count"] == 0
    assert before <= payload["failed_at"] <= time.time()
    # Sidekiq's first delay: 0**4 + 15 + rand(10) * 1 seconds
    assert payload["failed_at"] + 15 <= score <= payload["failed_at"] + 25
    r.zadd("retry", {raw: time.time()})  # make it due now
    wait_for(lambda: r.zcard("dead") == 1, timeout=10)
    dead = json.loads(r.zrange("dead", 0, -1)[0])
    assert dead["jid"] == job.jid
    assert dead["retry_count"] == 1
    assert "retried_at" in dead
    assert r.lrange("attempts", 0, -1) == ["f", "f"]
    assert r.zcard("retry") == 0
    assert r.get("stat:failed") == "2"


def test_retry_false_drops_and_retry_zero_goes_straight_to_dead(start_kiq, client, r):
    import sample_jobs

    start_kiq()
    sample_jobs.NoRetryJob.perform_later()
    dead = sample_jobs.StraightToDeadJob.perform_later()
    wait_for(lambda: r.zcard("dead") == 1)
    wait_for(lambda: r.get("stat:failed") == "2")
    assert json.loads(r.zrange("dead", 0, -1)[0])["jid"] == dead.jid
    assert r.zcard("retry") == 0
    assert r.lrange("attempts", 0, -1) == ["noretry"]


def test_garbage_payloads_go_to_dead_and_the_worker_keeps_working(start_kiq, client, redis_server, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    [worker] = kiq.wait_workers(1)
    garbage = [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"class": "RecordJob", "args": "not a list", "jid": "x"}),
        json.dumps({"class": "os.system", "args": ["echo pwned"], "jid": "a" * 24, "queue": "default"}),
    ]
    r.lpush("queue:default", *garbage)
    raw_client = redis.Redis.from_url(redis_server.url)
    raw_client.lpush("queue:default", b"\xff\xfe not utf-8")
    wait_for(lambda: r.zcard("dead") == len(garbage) and r.zcard("retry") == 1, timeout=10)
    sample_jobs.RecordJob.perform_later("after")
    wait_for(lambda: r.lrange("results", 0, -1) == ["after"])
    assert kiq.workers() == [worker]
    dead = [json.loads(raw) for raw in r.zrange("dead", 0, -1)]
    reasons = {d["error_message"] for d in dead}
    assert "payload is not valid JSON" in reasons
    [unknown] = [json.loads(raw) for raw in r.zrange("retry", 0, -1)]  # as Sidekiq retries a NameError
    assert unknown["class"] == "os.system" and unknown["args"] == ["echo pwned"]
    assert "no job class registered as 'os.system'" in unknown["error_message"]
    wrapped = [d for d in dead if d["class"] == "kiq.InvalidPayload"]
    assert sorted(d["args"][0] for d in wrapped if "raw_base64" not in d) == sorted(
        g for g in garbage if "os.system" not in g
    )
    [binary] = [d for d in dead if "raw_base64" in d]
    assert base64.b64decode(binary["raw_base64"]) == b"\xff\xfe not utf-8"
    assert wip_total(r) == 0


def test_idle_worker_starts_a_new_job_at_once(start_kiq, client, r):
    """No polling interval: a job pushed to an idle worker starts within milliseconds."""
    import sample_jobs

    start_kiq(processes=1, concurrency=2, queues=["a", "b", "c"])
    sample_jobs.TimedJob.set(queue="c").perform_later("warm")
    wait_for(lambda: r.hget("ran_at", "warm"))
    time.sleep(1.5)  # let every blocking wait time out at least once
    delays = []
    for n in range(5):
        pushed = time.time()
        sample_jobs.TimedJob.set(queue="abc"[n % 3]).perform_later(str(n))
        delays.append(float(wait_for(lambda n=n: r.hget("ran_at", str(n)), interval=0.001)) - pushed)
    assert max(delays) < 0.5, delays


def test_master_waits_for_redis_then_starts(start_kiq, redis_server, r):
    redis_server.stop()
    kiq = start_kiq()
    wait_for(lambda: "redis unreachable" in kiq.log(), timeout=10)
    assert kiq.workers() == []
    redis_server.start()
    kiq.wait_workers(1, timeout=15)
    kiq.signal(signal.SIGTERM)
    assert kiq.wait() == 0


def restarts(port: int, reason: str) -> str:
    """The restart counter's sample line for ``reason`` on the master's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return next((line for line in text.splitlines()
                 if line.startswith(f'kiq_worker_restarts_total{{reason="{reason}"}}')), "")


def test_a_stopped_worker_is_killed_replaced_and_its_job_runs_again(start_kiq, client, r):
    import sample_jobs

    port = free_port()
    kiq = start_kiq(processes=1, concurrency=2, worker_timeout=3, timeout=10,
                    metrics={"host": "127.0.0.1", "port": port})
    [stopped] = kiq.wait_workers(1)
    sample_jobs.SlowJob.perform_later("stuck", 1.0)
    wait_for(lambda: r.llen("started") == 1)
    os.kill(stopped, signal.SIGSTOP)
    [replacement] = wait_for(lambda: (w := kiq.workers()) and stopped not in w and w, timeout=30)
    wait_for(lambda: r.lrange("results", 0, -1) == ["stuck"], timeout=20)
    assert r.lrange("started", 0, -1) == [f"stuck:{stopped}", f"stuck:{replacement}"]
    log = kiq.log()
    assert "worker unresponsive, killing" in log and "killed by SIGKILL (unresponsive)" in log
    assert restarts(port, "unresponsive").endswith(" 1.0")
    assert restarts(port, "crash") == ""

    # a graceful stop that takes longer than worker_timeout keeps beating, so it is not killed
    sample_jobs.SlowJob.perform_later("last", 5.0)
    wait_for(lambda: r.llen("started") == 3)
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(60) == 0
    assert r.lrange("results", 0, -1) == ["stuck", "last"]
    assert kiq.log().count("worker unresponsive") == 1


GIL_JOB = textwrap.dedent("""
    import os
    import kiq, sample_jobs

    class GilJob(kiq.Job):
        def perform(self, token):
            runs = sample_jobs.conn().incr("gil-runs")
            sample_jobs.conn().rpush("started", f"{token}:{os.getpid()}")
            if runs == 1:
                sum(range(10**12))  # one C call: it never lets go of the GIL until it returns
            sample_jobs.conn().rpush("results", token)
""")


def test_a_worker_stuck_in_c_code_holding_the_gil_is_killed_and_its_job_runs_again(
        start_kiq, client, r, tmp_path):
    (tmp_path / "gil_jobs.py").write_text(GIL_JOB)
    kiq = start_kiq(processes=1, concurrency=2, worker_timeout=3, require=["sample_jobs", "gil_jobs"])
    [stuck] = kiq.wait_workers(1)
    client.enqueue("GilJob", ["held"])
    [replacement] = wait_for(lambda: (w := kiq.workers()) and stuck not in w and w, timeout=30)
    wait_for(lambda: r.lrange("results", 0, -1) == ["held"], timeout=20)
    assert r.lrange("started", 0, -1) == [f"held:{stuck}", f"held:{replacement}"]
    [killing] = [line for line in kiq.log().splitlines() if "worker unresponsive, killing" in line]
    assert "gil_jobs.py\\\", line 10 in perform" in killing, killing  # where it was stuck


def test_a_worker_killed_at_the_stop_timeout_is_said_so_not_out_of_memory(start_kiq):
    kiq = start_kiq(processes=1, timeout=1)
    [worker] = kiq.wait_workers(1)
    os.kill(worker, signal.SIGSTOP)
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(60) == 0
    log = kiq.log()
    assert "worker did not stop in time, killing" in log
    assert "killed by SIGKILL (stop timeout)" in log and "out of memory" not in log


def test_a_kiq_whose_every_worker_was_stopped_on_request_exits(start_kiq, r):
    """Sidekiq's Web UI Stop (a TERM in each worker's signals list, as `kiq stop --all` pushes):
    a Sidekiq process exits, so its process manager restarts it or not. A kiq whose workers had
    all been stopped stayed up with none, its title still counting them."""
    kiq = start_kiq(processes=2, heartbeat_interval=0.2)
    kiq.wait_workers(2)
    identities = wait_for(lambda: len(found := r.smembers("processes")) == 2 and found)
    first, second = sorted(identities)
    r.lpush(f"{first}-signals", "TERM")
    wait_for(lambda: len(kiq.workers()) == 1, timeout=15)
    assert kiq.process.poll() is None  # one worker left: the master goes on
    r.lpush(f"{second}-signals", "TERM")
    assert kiq.wait(30) == 0
    assert "every worker was stopped on request (Sidekiq's Web UI, kiq stop); stopping" in kiq.log()

"""Sidekiq's Ruby API (6.4 and 7.3) reads and changes kiq's data, and kiq's API reads Ruby Sidekiq's."""

from __future__ import annotations

import json
import socket
import time

import pytest
from conftest import wait_for

from kiq.api import API

pytestmark = pytest.mark.slow

SNAPSHOT = """
  stats = Sidekiq::Stats.new
  {
    "stats" => {
      "processed" => stats.processed, "failed" => stats.failed, "enqueued" => stats.enqueued,
      "scheduled_size" => stats.scheduled_size, "retry_size" => stats.retry_size,
      "dead_size" => stats.dead_size, "processes_size" => stats.processes_size,
      "workers_size" => stats.workers_size, "queues" => stats.queues,
      "today" => Sidekiq::Stats::History.new(1).processed.values.first,
    },
    "queues" => Sidekiq::Queue.all.map(&:name),
    "waiting" => (queue = Sidekiq::Queue.new("waiting"); {
      "size" => queue.size,
      "latency" => queue.latency,
      "jobs" => queue.map { |job| {
        "jid" => job.jid, "class" => job.klass, "display_class" => job.display_class, "args" => job.args,
        "display_args" => job.display_args, "queue" => job.queue, "enqueued_at" => job.enqueued_at.to_f,
        "created_at" => job.created_at.to_f, "latency" => job.latency, "kwargs" => job["kwargs"],
      } },
    }),
    "processes" => Sidekiq::ProcessSet.new.map { |process| {
      "identity" => process.identity, "hostname" => process["hostname"], "pid" => process["pid"],
      "busy" => process["busy"], "concurrency" => process["concurrency"], "queues" => process.queues,
      "tag" => process.tag, "labels" => process.labels, "stopping" => process.stopping?,
      "started_at" => process["started_at"], "beat" => process["beat"], "rss" => process["rss"],
    } },
    "workers" => Sidekiq::Workers.new.map { |process, thread, work| work = Interop.work(work); {
      "process" => process, "thread" => thread, "queue" => work["queue"], "run_at" => work["run_at"],
      "jid" => work["payload"]["jid"], "class" => work["payload"]["class"], "args" => work["payload"]["args"],
    } },
  }
"""


def test_sidekiq_api_reads_kiq_stats_queues_processes_and_running_jobs(r, ruby, interop_kiq, kiq_python):
    kiq = interop_kiq(processes=2, concurrency=3, tag="interop")
    worker_pids = set(kiq.wait_workers(2))
    r.sadd("py:failing", "f1")
    enqueued = json.loads(kiq_python("""
import json, time
from interop.jobs import DoomedJob, EchoJob, FlakyJob, GateJob, PidJob

waiting = [EchoJob.set(queue="waiting").perform_later(i, "w", size="small").jid for i in range(3)]
enqueued_at = time.time()
PidJob.perform_bulk([[f"p{i}"] for i in range(5)])
FlakyJob.perform_later("f1")
DoomedJob.perform_later("d1")
gates = [GateJob.perform_later(f"g{i}").jid for i in range(2)]
print(json.dumps({"waiting": waiting, "gates": gates, "enqueued_at": enqueued_at}))
"""))
    wait_for(lambda: r.llen("py:started") == 2 and r.zcard("retry") == 1 and r.zcard("dead") == 1, timeout=30)
    # Everything but the two running gates is acknowledged; the gates show on the next beats.
    snapshot = wait_for(lambda: (s := ruby(SNAPSHOT))["stats"]["processed"] == 7
                        and s["stats"]["workers_size"] == 2 and len(s["workers"]) == 2 and s, timeout=30)

    stats = snapshot["stats"]
    assert stats == {
        "processed": 7, "failed": 2, "enqueued": 3, "scheduled_size": 0, "retry_size": 1, "dead_size": 1,
        "processes_size": 2, "workers_size": 2, "queues": {"waiting": 3, "default": 0}, "today": 7,
    }
    assert sorted(snapshot["queues"]) == ["default", "waiting"]

    waiting = snapshot["waiting"]
    assert waiting["size"] == 3
    oldest_wait = time.time() - enqueued["enqueued_at"]
    assert 0 < waiting["latency"] <= oldest_wait + 1
    jobs = waiting["jobs"]
    assert [job["jid"] for job in jobs] == enqueued["waiting"][::-1]  # Sidekiq lists the newest first
    for index, job in zip((2, 1, 0), jobs, strict=True):
        assert job["class"] == job["display_class"] == "EchoJob"
        assert job["args"] == job["display_args"] == [index, "w"]
        assert job["kwargs"] == {"size": "small"}  # kiq's own field, passed over by Ruby
        assert job["queue"] == "waiting"
        assert job["created_at"] <= job["enqueued_at"] <= enqueued["enqueued_at"]
        assert 0 < job["latency"] <= oldest_wait + 1

    processes = {process["identity"]: process for process in snapshot["processes"]}
    assert {process["pid"] for process in processes.values()} == worker_pids  # the workers, not the master
    workers = snapshot["workers"]
    assert sorted(work["jid"] for work in workers) == sorted(enqueued["gates"])
    for identity, process in processes.items():
        assert identity == f"{socket.gethostname()}:{process['pid']}:{identity.rsplit(':', 1)[1]}"
        assert process["hostname"] == socket.gethostname()
        assert (process["concurrency"], process["queues"], process["tag"]) == (3, ["default"], "interop")
        assert process["labels"] == [] and process["stopping"] is False
        assert process["busy"] == sum(work["process"] == identity for work in workers)
        assert time.time() - 60 < process["started_at"] <= process["beat"] <= time.time() + 1
        assert process["rss"] > 0
    for work in workers:
        assert work["process"] in processes
        assert (work["queue"], work["class"]) == ("default", "GateJob")
        assert work["args"] == [f"g{enqueued['gates'].index(work['jid'])}"]
        assert time.time() - 60 < work["run_at"] <= time.time() + 1

    r.rpush("py:release:g0", "go")
    r.rpush("py:release:g1", "go")
    # Each read is a separate call, so wait for a snapshot taken between two beats.
    wait_for(lambda: (s := ruby(SNAPSHOT))["stats"]["processed"] == 9 and s["stats"]["workers_size"] == 0
             and not s["workers"] and all(process["busy"] == 0 for process in s["processes"]), timeout=30)


def attempts(r, token: str) -> int:
    return sum(json.loads(entry)["token"] == token for entry in r.lrange("py:attempts", 0, -1))


def test_sidekiq_api_reads_and_acts_on_kiq_retries_dead_and_scheduled_jobs(r, ruby, interop_kiq, kiq_python):
    interop_kiq()
    r.sadd("py:failing", "f1")
    enqueued = json.loads(kiq_python("""
import json
from interop.jobs import DoomedJob, EchoJob, FlakyJob

flaky = FlakyJob.perform_later("f1")
doomed = DoomedJob.perform_later("d1")
later = EchoJob.set(wait=600).perform_later("s1", size="large")
dropped = EchoJob.set(wait=900, queue="elsewhere").perform_later("s2")
print(json.dumps({"flaky": flaky.jid, "doomed": doomed.jid, "later": later.jid, "at": later.at,
                  "dropped": dropped.jid}))
"""))
    wait_for(lambda: r.zcard("retry") == 1 and r.zcard("dead") == 1, timeout=30)

    sets = ruby("""
      entry = ->(job) { job.item.slice("jid", "class", "args", "queue", "retry", "retry_count", "error_class",
                                       "error_message", "failed_at", "kwargs", "created_at")
                           .merge("at" => job.at.to_f, "error" => job.error?,
                                  "display_class" => job.display_class) }
      stats = Sidekiq::Stats.new
      {
        "sizes" => [stats.retry_size, stats.dead_size, stats.scheduled_size],
        "retry" => Sidekiq::RetrySet.new.map(&entry),
        "dead" => Sidekiq::DeadSet.new.map(&entry),
        "scheduled" => Sidekiq::ScheduledSet.new.map(&entry),
      }
    """)
    now = time.time()
    assert sets["sizes"] == [1, 1, 2]
    [retry] = sets["retry"]
    assert retry["jid"] == enqueued["flaky"]
    assert (retry["class"], retry["display_class"], retry["args"], retry["queue"]) == (
        "FlakyJob", "FlakyJob", ["f1"], "default")
    assert (retry["error_class"], retry["error_message"], retry["error"]) == ("ValueError", "boom f1", True)
    assert (retry["retry"], retry["retry_count"]) == (5, 0)
    assert now - 30 < retry["failed_at"] <= now
    assert retry["at"] >= retry["failed_at"] + 15  # Sidekiq's backoff: 0**4 + 15 + jitter

    [dead] = sets["dead"]
    assert dead["jid"] == enqueued["doomed"] and dead["class"] == "DoomedJob" and dead["args"] == ["d1"]
    assert (dead["error_class"], dead["error_message"], dead["retry_count"]) == (
        "RuntimeError", "doomed d1", 0)
    assert dead["failed_at"] <= dead["at"] <= now

    scheduled = {job["jid"]: job for job in sets["scheduled"]}
    later = scheduled[enqueued["later"]]
    assert later["at"] == pytest.approx(enqueued["at"], abs=1e-3)
    assert (later["class"], later["args"], later["kwargs"], later["error"]) == (
        "EchoJob", ["s1"], {"size": "large"}, False)

    # Sidekiq's API acts on kiq's entries, and kiq runs what it puts back in a queue.
    r.srem("py:failing", "f1")
    ruby(f'Sidekiq::RetrySet.new.find_job("{enqueued["flaky"]}").retry')
    wait_for(lambda: r.lrange("py:done", 0, -1) == ['"f1"'], timeout=30)
    ruby(f'Sidekiq::DeadSet.new.find_job("{enqueued["doomed"]}").retry')
    wait_for(lambda: attempts(r, "d1") == 2 and r.zcard("dead") == 1, timeout=30)
    again = json.loads(r.zrange("dead", 0, -1)[0])
    assert again["jid"] == enqueued["doomed"] and again["retry_count"] == 0 and "retried_at" in again

    ruby(f'Sidekiq::ScheduledSet.new.find_job("{enqueued["later"]}").add_to_queue')
    ran = json.loads(wait_for(lambda: r.lpop("py:echo"), timeout=30))
    assert (ran["jid"], ran["args"], ran["kwargs"]) == (enqueued["later"], ["s1"], {"size": "large"})
    ruby(f'Sidekiq::ScheduledSet.new.find_job("{enqueued["dropped"]}").delete')
    assert r.zcard("schedule") == 0 and r.zcard("retry") == 0
    assert ruby("Sidekiq::Stats.new.then { |s| [s.scheduled_size, s.retry_size, s.dead_size] }") == [0, 0, 1]


def test_sidekiq_reschedules_kiq_entries_in_place(r, ruby, interop_kiq, kiq_python):
    """Sidekiq's reschedule finds an entry by encoding it again (ZINCRBY of its own JSON): kiq's
    text must be Ruby's to the byte (characters as they are, floats as Ruby prints them), or a
    second entry dated 1970 would run at once beside the first. The same holds for its Web UI's
    filter, which searches the entries' text."""
    interop_kiq()
    r.sadd("py:failing", "café")
    jids = json.loads(kiq_python("""
import json
from interop.jobs import EchoJob, FlakyJob

later = EchoJob.set(wait=600).perform_later("déjà vu", 1e-05, 1e15, 2.5, 10**20, "\u2028")
flaky = FlakyJob.perform_later("café")
print(json.dumps({"later": later.jid, "flaky": flaky.jid}))
"""))
    wait_for(lambda: r.zcard("retry") == 1, timeout=30)
    at = round(time.time() + 3600, 3)
    ruby(f"""
      Sidekiq::ScheduledSet.new.find_job("{jids["later"]}").reschedule({at})
      Sidekiq::RetrySet.new.find_job("{jids["flaky"]}").reschedule({at})
    """)
    for key, jid in (("schedule", jids["later"]), ("retry", jids["flaky"])):
        [(entry, score)] = r.zrange(key, 0, -1, withscores=True)
        assert json.loads(entry)["jid"] == jid and score == pytest.approx(at, abs=1e-3), (key, entry, score)
    assert ruby('Sidekiq::ScheduledSet.new.scan("déjà").map(&:jid)') == [jids["later"]]


def test_kiq_api_reads_and_acts_on_what_ruby_sidekiq_retried_killed_and_runs(r, ruby, sidekiq, redis_server):
    peer = sidekiq(queues=("ruby",), concurrency=2)
    pushed = ruby("""
      {
        "failed" => RubyFailJob.perform_async("r1"),
        "dead" => RubyDeadJob.perform_async("d1"),
        "gate" => RubyGateJob.perform_async("g1"),
      }
    """)
    wait_for(lambda: r.zcard("retry") == 1 and r.zcard("dead") == 1 and r.llen("ruby:started") == 1,
             timeout=30)
    api = API(redis_server.url, namespace="")

    [retry] = api.retries.jobs()
    assert (retry.jid, retry.job_class, retry.queue, retry.args) == (
        pushed["failed"], "RubyFailJob", "ruby", ["r1"])
    summary = retry.summary()
    assert (summary["error_class"], summary["error_message"], summary["retry_count"]) == (
        "ArgumentError", "ruby failed r1", 0)
    assert retry.error == "ArgumentError: ruby failed r1"
    assert retry.score is not None and retry.score >= summary["failed_at"] + 15
    assert api.retries.find(pushed["failed"]) == retry

    [dead] = api.dead.jobs()
    assert (dead.jid, dead.job_class, dead.args, dead.error) == (
        pushed["dead"], "RubyDeadJob", ["d1"], "RuntimeError: ruby died d1")
    assert dead.score is not None and dead.score <= time.time()

    # Ruby Sidekiq beats every 5 s: its process, busy with the gate, and its counters.
    process = wait_for(lambda: next((p for p in api.processes() if p.busy == 1), None), timeout=30)
    assert process.identity == peer.identity
    assert process.info["pid"] == peer.pid and process.info["queues"] == ["ruby"]
    assert process.info["concurrency"] == 2 and process.quiet is False
    [running] = process.running
    assert running["queue"] == "ruby"
    payload = json.loads(running["payload"])  # a JSON string, as kiq writes it too
    assert (payload["jid"], payload["class"], payload["args"]) == (pushed["gate"], "RubyGateJob", ["g1"])
    stats = wait_for(lambda: (s := api.stats()).failed == 2 and s, timeout=30)
    assert (stats.processed, stats.retries, stats.dead, stats.processes, stats.busy) == (2, 1, 1, 1, 1)

    # kiq's API acts on Ruby's entries, and Ruby Sidekiq runs what it puts back.
    assert api.retries.retry([retry]) == 1
    wait_for(lambda: r.llen("ruby:attempts") == 2 and r.zcard("retry") == 1, timeout=30)
    [again] = api.retries.jobs()
    assert again.jid == pushed["failed"]
    assert again.payload["retry_count"] == 0 and "retried_at" in again.payload
    assert api.retries.kill([again]) == 1
    assert {job.jid for job in api.dead.jobs()} == {pushed["failed"], pushed["dead"]}
    assert ruby("Sidekiq::DeadSet.new.map(&:jid).sort") == sorted([pushed["failed"], pushed["dead"]])
    r.rpush("ruby:release:g1", "go")

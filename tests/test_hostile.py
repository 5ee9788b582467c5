"""A running kiq under attack: hostile jobs and payloads crafted by someone with write access
to Redis must never stop a worker while it looks alive, nor lose a job."""

from __future__ import annotations

import json
import re

import pytest
from conftest import wait_for

from kiq.client import build_payload

pytestmark = pytest.mark.slow


def crafted_payloads() -> list[str]:
    """Payloads that each broke kiq's failure handling and killed a processor thread."""

    def payload(job_class: str, **fields: object) -> str:
        job = build_payload(job_class, [], None)
        job.update(fields)
        return json.dumps(job)

    found = [
        payload("FailJob", args=["huge"], retry=10**90, retry_count=10**80),
        payload("CountedRetryJob", exception_executions={"[ValueError]": "many"}),
        payload("CountedRetryJob", exception_executions={"[ValueError]": [1, 2]}),
    ]
    for depth in range(960, 1000, 4):  # around the deepest a processor thread can read
        nested = "[" * depth + "]" * depth
        found.append(json.dumps(build_payload("NoSuchClass", [], None))[:-1] + f', "deep": {nested}}}')
    return found


def field(job: str, name: str) -> str:
    """A string field of a job hash too deeply nested for json.loads here."""
    found = re.search(f'"{name}":("(?:[^"\\\\]|\\\\.)*")', job)
    assert found, f"no {name} in {job[:200]}"
    return str(json.loads(found.group(1)))


def test_hostile_jobs_and_crafted_payloads_never_wedge_a_worker(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=2, concurrency=2)
    kiq.wait_workers(2)
    hostile = crafted_payloads()
    for _ in range(3):
        sample_jobs.UnprintableErrorJob.perform_later()
        sample_jobs.BadWaitJob.perform_later()
        r.lpush("queue:default", *hostile)
    expected = 3 * (2 + len(hostile))
    for n in range(200):
        sample_jobs.RecordJob.perform_later(f"n{n}")
    wait_for(lambda: r.llen("results") == 200, timeout=60)
    # Every hostile job ended as failed: a retry or a dead entry each, none stuck in progress.
    wait_for(lambda: r.zcard("retry") + r.zcard("dead") == expected, timeout=20)
    wait_for(lambda: not any(r.llen(key) for key in r.keys("kiq:wip:*")), timeout=10)
    ended = r.zrange("retry", 0, -1) + r.zrange("dead", 0, -1)
    errors = {field(job, "error_class") for job in ended}
    assert {"sample_jobs.UnprintableError", "ValueError", "kiq.UnknownJobError"} <= errors
    unprintable = [job for job in ended if field(job, "class") == "UnprintableErrorJob"]
    assert len(unprintable) == 3
    assert all("str() raised" in field(job, "error_message") for job in unprintable)
    # No thread died on the way (a dead thread's traceback would be in the log).
    assert "processor thread died" not in kiq.log() and "a thread ended with an exception" not in kiq.log()


def test_a_processor_thread_that_dies_is_replaced(start_kiq, client, r):
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=1)
    kiq.wait_workers(1)
    sample_jobs.ThreadKillerJob.perform_later()
    wait_for(lambda: "processor thread died" in kiq.log(), timeout=10)
    # The dead thread was watching the queue: the queue is watched again, and the worker
    # still has all its threads.
    for n in range(3):
        sample_jobs.RecordJob.perform_later(f"after{n}")
    expected = ["after0", "after1", "after2", "killer"]
    wait_for(lambda: sorted(r.lrange("results", 0, -1)) == expected, timeout=10)
    line = next(json.loads(line) for line in kiq.log().splitlines() if "processor thread died" in line)
    assert "ThreadDeath" in line["exception"]


def test_errors_that_cannot_be_rendered_or_are_huge_fail_their_job_and_nothing_else(start_kiq, client, r):
    """Each error here once ended the processor thread that logged it (a worker whose threads
    all died looked alive), left the event loop dead, sent the job to the dead set unretried,
    or wrote a log line of 100 MB. Each must be one failure of its own job, retried, with its
    traceback in a bounded fail line, while innocent jobs run on."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=2)
    kiq.wait_workers(1)
    for kind in ("syntax", "notes", "nameless"):
        for _ in range(2):  # more than the worker's threads
            sample_jobs.UnrenderableErrorJob.perform_later(kind)
    sample_jobs.HugeErrorJob.perform_later()
    sample_jobs.AsyncExitJob.perform_later()
    sample_jobs.BrokenInitJob.perform_later()
    for n in range(20):
        sample_jobs.RecordJob.perform_later(f"n{n}")
        sample_jobs.AsyncJob.perform_later(f"a{n}")
    wait_for(lambda: r.llen("results") == 40, timeout=30)
    wait_for(lambda: r.zcard("retry") == 9, timeout=20)
    classes = sorted(json.loads(job)["error_class"] for job in r.zrange("retry", 0, -1))
    notes, syntax, nameless = "sample_jobs.NotesError", "SyntaxError", "NamelessError"
    assert classes == ["KeyError", nameless, nameless, "RuntimeError", syntax, syntax, "SystemExit", notes,
                       notes]
    assert not r.zcard("dead")
    lines = kiq.log().splitlines()
    assert max(map(len, lines)) < 200_000
    assert "processor thread died" not in kiq.log() and "a thread ended with an exception" not in kiq.log()
    fails = [json.loads(line) for line in lines if '"event": "fail"' in line]
    assert len(fails) == 9 and all(line["exception"] for line in fails)
    syntax = next(line for line in fails if line["error"].startswith("SyntaxError"))
    assert "bad template" in syntax["exception"] and "perform" in syntax["exception"]
    broken = next(line for line in fails if line["error"].startswith("KeyError"))
    assert broken["class"] == "BrokenInitJob" and broken["jid"] and broken["then"] == "retry"


def test_a_child_a_job_forks_and_forgets_ends_instead_of_running_jobs(start_kiq, client, r):
    """The child of a bare fork returned into the worker's processor thread: it went on taking
    the jobs the worker held and ran them a second time, and outlived the stop."""
    import sample_jobs

    kiq = start_kiq(processes=1, concurrency=1)
    kiq.wait_workers(1)
    sample_jobs.ForkJob.perform_later()
    for n in range(100):
        sample_jobs.RecordJob.perform_later(f"n{n}")
    wait_for(lambda: r.llen("results") >= 100, timeout=30)
    [child] = map(int, r.lrange("children", 0, -1))
    wait_for(lambda: not running(child), timeout=10)  # it records nothing more
    assert sorted(r.lrange("results", 0, -1)) == sorted(f"n{n}" for n in range(100))
    lines = [json.loads(line) for line in kiq.log().splitlines() if line.startswith("{")]
    events = sorted(line["event"] for line in lines if line.get("class") == "ForkJob")
    assert events == ["a job's forked child returned into kiq; it ends here (end it with os._exit)",
                      "done"]  # the parent's done alone


def running(pid: int) -> bool:
    """Whether ``pid`` runs: neither gone nor a zombie that its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False

"""The operator CLI (``kiq stats``, ``kiq retries``...) run as a real subprocess against a real Redis."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from conftest import ROOT, alive, free_port, sample_env, wait_for
from webdata import job, plant_hostile_records, plant_huge_numbers, plant_keys_of_another_type

from kiq.client import Client
from kiq.keys import day
from kiq.retry import decode_backtrace

NOW = time.time()
FAST_BEATS = {"heartbeat_interval": 0.2, "heartbeat_ttl": 5}


@pytest.fixture(autouse=True)
def _now() -> None:
    """Times in these tests count from the test's own start: a slow suite once reached a
    test more than 100 s after collection, when "in 60 s" had become "40 s ago"."""
    global NOW
    NOW = time.time()


Result = subprocess.CompletedProcess[str]


def kiq(redis_url: str | None, *args: str, env: dict[str, str] | None = None) -> Result:
    """``python -m kiq ARGS --redis-url URL`` (no ``--redis-url`` when ``redis_url`` is None)."""
    [done] = kiq_many(redis_url, [args], env=env)
    return done


def kiq_many(redis_url: str | None, commands: Sequence[Sequence[str]],
             env: dict[str, str] | None = None) -> list[Result]:
    """Several independent ``kiq`` commands run side by side (start-up time dominates each)."""
    started = []
    for args in commands:
        command = [sys.executable, "-m", "kiq", *args]
        if redis_url is not None:
            command += ["--redis-url", redis_url]
        started.append((command, subprocess.Popen(
            command, cwd=ROOT, env=env or sample_env(redis_url or ""), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace")))
    results = []
    for command, process in started:
        stdout, stderr = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def ok(redis_url: str | None, *args: str) -> str:
    done = kiq(redis_url, *args)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def ok_json(redis_url: str, *args: str) -> Any:
    return json.loads(ok(redis_url, *args, "--json"))


def outputs(redis_url: str, *commands: Sequence[str]) -> list[str]:
    """The output of each command (run side by side), all of which must succeed."""
    results = kiq_many(redis_url, commands)
    for done in results:
        assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return [done.stdout for done in results]


def assert_table(text: str, headers: Sequence[str], rows: Sequence[Sequence[str | None]],
                 right: Sequence[int] = ()) -> None:
    """``text`` is a header line and one line per row, each column aligned under its header:
    left-aligned columns start where their header starts, right-aligned ones end where it ends.
    A cell given as None is not checked."""
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == len(rows) + 1, text
    spans, pos = [], 0
    for header in headers:
        start = lines[0].index(header, pos)
        spans.append((start, start + len(header)))
        pos = start + len(header)
    for line, row in zip(lines[1:], rows, strict=True):
        assert len(row) == len(headers)
        for column, (cell, (start, end)) in enumerate(zip(row, spans, strict=True)):
            if cell is None:
                continue
            begin = end - len(cell) if column in right else start
            assert line[begin:begin + len(cell)] == cell, (column, cell, line, lines[0])
            assert begin == 0 or line[begin - 1] == " ", (column, line)
            assert line[begin + len(cell):begin + len(cell) + 1] in ("", " "), (column, line)


def jid(n: int) -> str:
    return f"{n:024x}"


def dump(job: dict[str, Any]) -> str:
    return json.dumps(job, separators=(",", ":"), ensure_ascii=False)


def sidekiq_job(n: int, queue: str = "default", job_class: str = "RecordJob", **extra: Any) -> dict[str, Any]:
    """A job hash as Sidekiq 6.4 writes it."""
    job: dict[str, Any] = {"retry": True, "queue": queue, "class": job_class, "args": [f"t{n}"],
                           "jid": jid(n), "created_at": NOW - 300, "enqueued_at": NOW - 300}
    job.update(extra)
    return job


def sidekiq_failure(n: int, queue: str = "default", retry_count: int = 0, **extra: Any) -> dict[str, Any]:
    fields = {"retry_count": retry_count, "error_class": "RuntimeError", "error_message": f"boom {n}",
              "failed_at": NOW - 200}
    return sidekiq_job(n, queue, **{**fields, **extra})


def heartbeat(r: redis.Redis, ident: str, busy: int = 0, quiet: bool = False, prefix: str = "") -> None:
    info = {"hostname": ident.split(":")[0], "pid": int(ident.split(":")[1]), "started_at": NOW - 60,
            "tag": "shop", "concurrency": 10, "queues": ["critical", "default"], "labels": [],
            "identity": ident}
    r.sadd(prefix + "processes", ident)
    r.hset(prefix + ident, mapping={"info": json.dumps(info), "busy": busy, "beat": time.time(),
                                    "quiet": "true" if quiet else "false", "rss": 40960})
    r.expire(prefix + ident, 60)


# -- reading: stats, queues, processes, sets -------------------------------


def test_stats_table_and_json(redis_server, r):
    url = redis_server.url
    r.set("stat:processed", 12345)
    r.set("stat:failed", 67)
    r.set(f"stat:processed:{day()}", 89)
    r.set(f"stat:failed:{day()}", 1)
    r.sadd("queues", "default", "critical")
    r.lpush("queue:default", *(dump(sidekiq_job(n)) for n in range(3)))
    r.lpush("queue:critical", dump(sidekiq_job(9, "critical")))
    r.zadd("schedule", {dump(sidekiq_job(10, at=NOW + 60)): NOW + 60})
    r.zadd("retry", {dump(sidekiq_failure(n)): NOW + n for n in range(11, 13)})
    r.zadd("dead", {dump(sidekiq_failure(n)): NOW - n for n in range(13, 17)})
    heartbeat(r, "web-1:101:0a0a0a0a0a0a", busy=4)
    heartbeat(r, "web-2:202:0b0b0b0b0b0b", busy=1)

    expected = {"processed": 12345, "failed": 67, "enqueued": 4, "scheduled": 1, "retries": 2, "dead": 4,
                "processes": 2, "busy": 5, "processed_today": 89, "failed_today": 1}
    data, text = outputs(url, ["stats", "--json"], ["stats"])
    assert json.loads(data) == expected
    assert_table(text, ["stat", "value"], [[k, str(v)] for k, v in expected.items()], right=[1])


def test_queues_table_and_json(redis_server, r):
    url = redis_server.url
    r.sadd("queues", "default", "critical", "low")
    r.lpush("queue:default", dump(sidekiq_job(1, enqueued_at=time.time() - 20)), dump(sidekiq_job(2)))
    # Sidekiq 8 writes enqueued_at in integer milliseconds.
    r.lpush("queue:critical", *(dump(sidekiq_job(n, "critical", enqueued_at=int((time.time() - 3) * 1000)))
                                for n in range(10, 22)))

    # A live worker holds three jobs of "low" it has not started, the oldest enqueued 40 s ago.
    r.sadd("processes", "host:1:abc")
    r.hset("host:1:abc", mapping={"info": "{}", "prefetched": json.dumps({"low": [3, time.time() - 40]})})
    r.rpush("kiq:suspects:default", dump(sidekiq_job(3)))  # waits to run alone (kiq.recovery)

    raw, text = outputs(url, ["queues", "--json"], ["queues"])
    data = json.loads(raw)
    assert [(q["queue"], q["size"], q["prefetched"], q["suspects"]) for q in data] == [
        ("critical", 12, 0, 0), ("default", 2, 0, 1), ("low", 0, 3, 0)]
    latency = {q["queue"]: q["latency"] for q in data}
    assert 2.5 < latency["critical"] < 10 and 19.5 < latency["default"] < 30 and 39.5 < latency["low"] < 50

    found = {line.split()[0]: float(line.split()[4]) for line in text.splitlines()[1:]}
    assert 2.5 < found["critical"] < 10 and 19.5 < found["default"] < 30
    rows = [[name, size, held, suspects, f"{found[name]:.3f}"] for name, size, held, suspects in
            (("critical", "12", "0", "0"), ("default", "2", "0", "1"), ("low", "0", "3", "0"))]
    assert_table(text, ["queue", "size", "prefetched", "suspects", "latency_s"], rows, right=[1, 2, 3, 4])


def test_empty_listings(redis_server):
    url = redis_server.url
    commands = ("queues", "processes", "retries", "dead", "scheduled")
    *listings, table = outputs(url, *([command, "--json"] for command in commands), ["dead"])
    assert [json.loads(listing) for listing in listings] == [[]] * len(commands)
    assert table.split() == ["jid", "class", "queue", "when", "retries", "error", "args"]


def test_processes_table_and_json_from_heartbeats(redis_server, r):
    url = redis_server.url
    heartbeat(r, "web-1:101:0a0a0a0a0a0a", busy=3)
    heartbeat(r, "web-22:2020:0b0b0b0b0b0b", quiet=True)
    work = {"queue": "default", "payload": dump(sidekiq_job(1)), "run_at": int(NOW)}
    r.hset("web-1:101:0a0a0a0a0a0a:work", "tid-7", json.dumps(work))
    r.sadd("processes", "web-3:303:0c0c0c0c0c0c")  # heartbeat expired

    raw, text = outputs(url, ["processes", "--json"], ["processes"])
    data = json.loads(raw)
    assert [p["identity"] for p in data] == ["web-1:101:0a0a0a0a0a0a", "web-22:2020:0b0b0b0b0b0b"]
    first = data[0]
    assert first["info"]["concurrency"] == 10 and first["info"]["queues"] == ["critical", "default"]
    assert (first["busy"], first["quiet"], first["rss_kb"], first["running"]) == (3, False, 40960, [work])
    assert abs(first["beat"] - time.time()) < 30
    assert data[1]["quiet"] is True
    rows = [["web-1:101:0a0a0a0a0a0a", "shop", "3/10", "", "40.000", None, "critical,default"],
            ["web-22:2020:0b0b0b0b0b0b", "shop", "0/10", "quiet", "40.000", None, "critical,default"]]
    headers = ["identity", "tag", "busy", "state", "rss_mb", "beat", "queues"]
    assert_table(text, headers, rows, right=[4])
    assert all(re.search(r"  \d+s ago  ", line) for line in text.splitlines()[1:])


@pytest.mark.parametrize("command, key", [("retries", "retry"), ("dead", "dead"), ("scheduled", "schedule")])
def test_set_listing_table_and_json(redis_server, r, command, key):
    url = redis_server.url
    jobs = {n: sidekiq_failure(n, "critical" if n % 2 else "default", retry_count=n, retried_at=NOW - 1)
            for n in range(5)}
    sign = -1 if key == "dead" else 1
    r.zadd(key, {dump(job): NOW + sign * 100 - 10 * n for n, job in jobs.items()})

    raw, limited, text = outputs(url, [command, "--json"], [command, "--json", "--limit", "2"], [command])
    data = json.loads(raw)
    order = [4, 3, 2, 1, 0]  # by score
    assert [entry["jid"] for entry in data] == [jid(n) for n in order]
    for entry in data:
        n = int(entry["jid"], 16)
        job = jobs[n]
        for field in ("class", "queue", "args", "retry_count", "error_class", "error_message", "failed_at",
                      "enqueued_at"):
            assert entry[field] == job[field], field
        assert entry["at"] == pytest.approx(r.zscore(key, dump(job)))

    assert [entry["jid"] for entry in json.loads(limited)] == [jid(n) for n in order[:2]]

    headers = ["jid", "class", "queue", "when", "retries", "error", "args"]
    lines = text.splitlines()
    assert len(lines) == 6
    rows = []
    for line, n in zip(lines[1:], order, strict=True):
        when = line[lines[0].index("when"):].split("  ")[0].strip()
        assert when.endswith("s ago") if key == "dead" else when.startswith("in ")
        rows.append([jid(n), "RecordJob", jobs[n]["queue"], when, str(n), f"RuntimeError: boom {n}",
                     f'["t{n}"]'])
    assert_table(text, headers, rows, right=[4])


def test_listing_shows_long_arguments_cut_in_the_table_and_whole_in_json(redis_server, r):
    url = redis_server.url
    long_args = ["x" * 200, {"nested": list(range(50))}]
    r.zadd("dead", {dump(sidekiq_failure(1, args=long_args)): NOW})
    raw, text = outputs(url, ["dead", "--json"], ["dead"])
    assert json.loads(raw)[0]["args"] == long_args
    [_, line] = text.splitlines()
    assert line.endswith("...") and len(line) < 250


def test_table_keeps_one_line_per_job_when_an_error_message_has_newlines(redis_server, r):
    url = redis_server.url
    r.zadd("retry", {dump(sidekiq_failure(1, error_message="PG::Error\nDETAIL: line two")): NOW + 10,
                     dump(sidekiq_failure(2)): NOW + 20})
    text = ok(url, "retries")
    assert len(text.splitlines()) == 3, text


def test_json_listing_shows_keyword_arguments(redis_server, r):
    url = redis_server.url
    handle = Client(url).enqueue("EchoJob", [1], {"size": "large"}, at=time.time() + 600)
    assert json.loads(r.zrange("schedule", 0, 0)[0])["kwargs"] == {"size": "large"}
    [entry] = ok_json(url, "scheduled")
    assert entry["jid"] == handle.jid and entry["args"] == [1]
    assert entry.get("kwargs") == {"size": "large"}


# -- acting on sets by jid --------------------------------------------------


def test_retries_retry_delete_kill_by_jid(redis_server, r):
    url = redis_server.url
    r.zadd("retry", {dump(sidekiq_failure(n, retry_count=3)): NOW + 60 + n for n in range(6)})

    retried, deleted, killed = outputs(url, ["retries", "retry", jid(0), jid(1)],
                                       ["retries", "delete", jid(2), "--json"], ["retries", "kill", jid(3)])
    assert retried.strip() == "retry: 2 job(s)"
    queued = [json.loads(raw) for raw in r.lrange("queue:default", 0, -1)]
    assert sorted(job["jid"] for job in queued) == [jid(0), jid(1)]
    assert all(job["retry_count"] == 2 and job["enqueued_at"] > NOW for job in queued)

    assert json.loads(deleted) == {"action": "delete", "set": "retry", "done": 1, "left": 0, "not_found": []}
    assert killed.strip() == "kill: 1 job(s)"
    assert r.zrange("dead", 0, -1) == [dump(sidekiq_failure(3, retry_count=3))]
    assert [job["jid"] for job in ok_json(url, "retries")] == [jid(4), jid(5)]


def test_a_missing_jid_exits_1_and_the_others_are_still_acted_on(redis_server, r):
    url = redis_server.url
    r.zadd("dead", {dump(sidekiq_failure(n)): NOW - n for n in range(3)})
    missing = "f" * 24

    retried, deleted, killed = kiq_many(url, [["dead", "retry", jid(0), missing],
                                              ["dead", "delete", missing, jid(1), "--json"],
                                              ["retries", "kill", missing]])
    assert (retried.returncode, deleted.returncode, killed.returncode) == (1, 1, 1)
    assert retried.stdout.strip() == f"retry: 1 job(s); not found: {missing}"
    assert [json.loads(raw)["jid"] for raw in r.lrange("queue:default", 0, -1)] == [jid(0)]
    assert json.loads(deleted.stdout) == {"action": "delete", "set": "dead", "done": 1, "left": 0,
                                          "not_found": [missing]}
    assert killed.stdout.strip() == f"kill: 0 job(s); not found: {missing}"
    assert r.zrange("dead", 0, -1) == [dump(sidekiq_failure(2))]


def test_scheduled_retry_enqueues_now_and_delete_removes(redis_server, r):
    url = redis_server.url
    r.zadd("schedule", {dump(sidekiq_job(n, "low", at=NOW + 3600)): NOW + 3600 for n in range(3)})
    r.zadd("schedule", {dump(sidekiq_job(9, at=NOW + 3600)): NOW + 3600})
    assert ok(url, "scheduled", "retry", jid(1)).strip() == "retry: 1 job(s)"
    [raw] = r.lrange("queue:low", 0, -1)
    assert "at" not in json.loads(raw) and "low" in r.smembers("queues")
    assert ok(url, "scheduled", "delete", "--all").strip() == "delete: 3 job(s)"
    assert r.zcard("schedule") == 0 and r.llen("queue:low") == 1


def test_retries_kill_all_and_delete_all(redis_server, r):
    url = redis_server.url
    r.zadd("retry", {dump(sidekiq_failure(n)): NOW + n for n in range(250)})
    assert json.loads(ok(url, "retries", "kill", "--all", "--json")) == {
        "action": "kill", "set": "retry", "done": 250, "left": 0, "not_found": []}
    assert r.zcard("retry") == 0 and r.zcard("dead") == 250
    assert ok(url, "dead", "delete", "--all").strip() == "delete: 250 job(s)"
    assert r.zcard("dead") == 0


def test_dead_retry_all_moves_thousands_of_sidekiq_dead_jobs(redis_server, r):
    url = redis_server.url
    count = 3000
    queues = ("default", "critical", "low")
    pipe = r.pipeline(transaction=False)
    for n in range(count):
        job = sidekiq_failure(n, queues[n % 3], retry_count=25, args=[n, "café", {"k": [1.5, None]}],
                              error_backtrace=["app/jobs/x.rb:12:in `perform'"], retried_at=NOW - 100)
        pipe.zadd("dead", {dump(job): NOW - 10_000 + n})
    pipe.execute()
    r.zadd("dead", {"corrupt, not json": NOW})  # stays for a person to look at

    done = kiq(url, "dead", "retry", "--all")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"retry: {count} job(s); 1 left where they are: not job hashes")
    assert r.zrange("dead", 0, -1) == ["corrupt, not json"]
    assert [r.llen(f"queue:{q}") for q in queues] == [count // 3] * 3
    assert r.smembers("queues") == set(queues)
    first = json.loads(r.rpop("queue:default"))  # type: ignore[arg-type]
    assert first["args"] == [0, "café", {"k": [1.5, None]}] and first["retry_count"] == 24
    assert "at" not in first and first["enqueued_at"] > NOW
    assert ok_json(url, "stats")["enqueued"] == count - 1


# -- enqueue ---------------------------------------------------------------


def test_find_tells_where_a_job_is_and_exits_1_when_it_is_nowhere(redis_server, r):
    url = redis_server.url
    r.sadd("queues", "default")
    r.lpush("queue:default", dump(sidekiq_job(1)))
    r.zadd("retry", {dump(sidekiq_failure(1)): NOW + 60})  # the same jid in two places
    heartbeat(r, "web-1:101:0a0a0a0a0a0a", busy=1)
    work = {"queue": "default", "payload": dump(sidekiq_job(2)), "run_at": int(NOW - 5)}
    r.hset("web-1:101:0a0a0a0a0a0a:work", "tid-7", json.dumps(work))

    r.sadd("kiq:wip", "web-1:101:0a0a0a0a0a0a|default")
    r.rpush("kiq:wip:web-1:101:0a0a0a0a0a0a|default", dump(sidekiq_job(4)))
    r.rpush("kiq:suspects:default", dump(sidekiq_job(5)))  # to run alone (kiq.recovery)

    raw, text, running, missing, taken, suspect = kiq_many(
        url, [["find", jid(1), "--json"], *(["find", jid(n)] for n in range(1, 6))])
    assert raw.returncode == text.returncode == running.returncode == 0, (raw.stderr, text.stderr)
    data = json.loads(raw.stdout)
    assert [(each["place"], each["name"]) for each in data] == [("queue", "default"), ("retry", "retry")]
    assert data[1]["at"] == pytest.approx(NOW + 60) and data[1]["job"]["error_message"] == "boom 1"
    assert text.stdout.startswith("waiting in queue default\njid         " + jid(1))
    assert "\n\nin the retry set\n" in text.stdout and "RuntimeError: boom 1" in text.stdout
    assert re.match(r"running in web-1:101:0a0a0a0a0a0a, started \d+s ago\n", running.stdout)
    assert "\nat " not in running.stdout  # a running job has no time in a sorted set
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", f"not found: {jid(3)}\n")
    assert taken.returncode == 0
    assert taken.stdout.startswith("taken by web-1:101:0a0a0a0a0a0a (about to start")
    assert suspect.returncode == 0 and suspect.stdout.startswith("waiting to run alone, queue default (")


def test_an_active_job_is_listed_by_its_own_class_and_arguments(redis_server, r):
    wrapped = {"class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped": "HelloJob",
               "args": [{"job_class": "HelloJob", "arguments": ["World", 7], "queue_name": "default"}]}
    r.zadd("retry", {dump(sidekiq_failure(1, **wrapped)): NOW + 60})
    listing, shown = outputs(redis_server.url, ["retries"], ["retries", "show", jid(1)])
    assert "HelloJob" in listing and '["World", 7]' in listing and "JobWrapper" not in listing
    assert "class       HelloJob\n" in shown and 'args        ["World", 7]' in shown


ESCAPES = "\x1b]0;owned\x07\x1b[2J\u202e"  # retitle and clear the terminal, reverse the text


def test_what_redis_holds_is_shown_on_a_terminal_not_obeyed(redis_server, r):
    """Queue names, hostnames, classes, errors and backtraces come from Redis, where anything
    with access may have written escape sequences: every text listing shows them escaped."""
    from kiq.retry import encode_backtrace

    url = redis_server.url
    queue = "mail" + ESCAPES
    r.sadd("queues", queue)
    r.lpush(f"queue:{queue}", dump(sidekiq_job(1, queue=queue)))
    backtrace = encode_backtrace(["at" + ESCAPES])
    failure = sidekiq_failure(2, queue=queue, job_class="Bad" + ESCAPES, error_class="Err" + ESCAPES,
                              error_message="boom" + ESCAPES, error_backtrace=backtrace)
    r.zadd("dead", {dump(failure): NOW - 10})
    heartbeat(r, "host" + ESCAPES + ":101:0a0a0a0a0a0a", busy=1)
    r.hset("host" + ESCAPES + ":101:0a0a0a0a0a0a:work", "tid-7",
           json.dumps({"queue": queue, "payload": dump(sidekiq_job(3, queue=queue)), "run_at": int(NOW - 5)}))
    texts = outputs(url, ["queues"], ["processes"], ["dead"], ["dead", "show", jid(2)], ["find", jid(1)],
                    ["find", jid(3)])
    shown = ESCAPES.encode("unicode_escape").decode()
    for text in texts:
        assert not any(char in text for char in "\x1b\x07\u202e"), text
    queues, processes, dead, show, waiting, running = texts
    assert "mail" + shown in queues and "host" + shown in processes
    assert "Bad" + shown in dead and "boom" + shown in dead
    assert "boom" + shown in show and "  at" + shown in show
    assert waiting.startswith(f"waiting in queue mail{shown}\n")
    assert running.startswith(f"running in host{shown}:101:0a0a0a0a0a0a, started")


def test_enqueue_then_a_running_kiq_runs_it(redis_server, r, start_kiq):
    url = redis_server.url
    record, echo, later = outputs(
        url, ["enqueue", "RecordJob", '"x"', "-q", "default"],
        ["enqueue", "EchoJob", "1", "two", '{"a": [1, null]}', "-k", "size=large", "-k", "n=3",
         "-k", 'opts={"deep": true}', "--json"],
        ["enqueue", "TimedJob", '"later"', "--in", "1", "--json"])
    jid_, echo, later = record.strip(), json.loads(echo), json.loads(later)
    [job] = [json.loads(raw) for raw in r.lrange("queue:default", 0, -1) if jid_ in raw]
    assert (job["jid"], job["class"], job["args"], job["queue"]) == (jid_, "RecordJob", ["x"], "default")
    assert len(jid_) == 24 and job["enqueued_at"] == pytest.approx(time.time(), abs=30)
    assert (echo["job_class"], echo["queue"], echo["at"]) == ("EchoJob", "default", None)
    assert later["at"] > time.time() - 1 and r.zcard("schedule") == 1

    start_kiq(**FAST_BEATS)
    wait_for(lambda: r.lrange("results", 0, -1) == ["x"] and r.llen("echo") == 1)
    args, kwargs = json.loads(r.lindex("echo", 0))  # type: ignore[arg-type]
    assert args == [1, "two", {"a": [1, None]}]
    assert kwargs == {"size": "large", "n": 3, "opts": {"deep": True}}
    ran_at = float(wait_for(lambda: r.hget("ran_at", "later"), timeout=10))
    assert ran_at >= later["at"]  # not before its time
    wait_for(lambda: r.get("stat:processed") == "3")
    stats = ok_json(url, "stats")
    assert stats["processed"] == stats["processed_today"] == 3
    assert stats["enqueued"] == stats["scheduled"] == 0 and stats["processes"] == 1


def test_enqueue_in_a_named_queue_and_in_seconds(redis_server, r):
    url = redis_server.url
    before = time.time()
    _, scheduled = outputs(url, ["enqueue", "RecordJob", "plain-string", "-q", "critical"],
                           ["enqueue", "TimedJob", '"later"', "--in", "1", "--json"])
    assert json.loads(r.lindex("queue:critical", 0))["args"] == ["plain-string"]  # type: ignore[arg-type]
    assert "critical" in r.smembers("queues")

    handle = json.loads(scheduled)
    assert before + 1 <= handle["at"] <= time.time() + 1
    [(raw, score)] = r.zrange("schedule", 0, -1, withscores=True)
    job = json.loads(raw)
    assert (job["jid"], job["class"], job["args"]) == (handle["jid"], "TimedJob", ["later"])
    assert score == pytest.approx(handle["at"])  # the score says when, as in Sidekiq
    assert "enqueued_at" not in job
    assert [entry["jid"] for entry in ok_json(url, "scheduled")] == [handle["jid"]]


@pytest.mark.parametrize("plant", [plant_hostile_records, plant_huge_numbers])
def test_every_reading_command_shows_what_it_can_around_hostile_records(redis_server, plant):
    plant(redis_server.url)
    commands = [["stats"], ["processes"], ["queues"], ["retries"], ["dead"], ["scheduled"],
                ["find", "0" * 24], ["stats", "--json"], ["processes", "--json"], ["queues", "--json"],
                ["retries", "--json"]]
    for done in kiq_many(redis_server.url, commands):
        assert done.returncode == (1 if "find" in done.args else 0), (done.args, done.stderr)
        assert "Traceback" not in done.stderr, (done.args, done.stderr)


def test_the_reading_commands_leave_out_what_a_key_of_another_type_holds(redis_server, r):
    plant_keys_of_another_type(r)
    stats, queues, processes, found = kiq_many(redis_server.url, [["stats", "--json"], ["queues", "--json"],
                                                                  ["processes"], ["find", job(1)["jid"]]])
    for done in (stats, queues, processes, found):
        assert done.returncode == 0, (done.args, done.stderr)
    assert json.loads(stats.stdout)["enqueued"] == 1
    assert [each["queue"] for each in json.loads(queues.stdout)] == ["ok"]
    assert found.stdout.startswith("waiting in queue ok")


def test_an_action_says_which_entries_it_left_where_they_are(redis_server, r):
    url = redis_server.url
    good, odd = sidekiq_failure(1), {**sidekiq_failure(2), "queue": 5}
    r.zadd("retry", {dump(good): NOW, dump(odd): NOW, "not json": NOW})
    r.hset("queue:default", "a", "b")
    named = kiq(url, "retries", "retry", good["jid"])
    assert named.returncode == 1 and named.stdout.startswith("retry: 0 job(s); 1 left where they are: ")
    r.set("dead", "x")
    assert kiq(url, "retries", "kill", good["jid"]).stdout.startswith("kill: 0 job(s); 1 left where")
    r.delete("queue:default", "dead")
    report = json.loads(ok(url, "retries", "retry", "--all", "--json"))
    assert (report["done"], report["left"]) == (1, 2)  # the one that names no queue kiq could serve stays
    assert r.zcard("retry") == 2 and r.llen("queue:default") == 1 and not r.exists("queue:5")


def test_a_key_of_another_type_is_named_as_such_not_as_redis_unavailable(redis_server, r):
    r.set("retry", "x")
    done = kiq(redis_server.url, "retries")  # the listing of that one key: nothing else to show
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "a key holds another type than kiq and Sidekiq keep there: fix or delete it" in done.stderr
    assert "WRONGTYPE" in done.stderr and "redis unavailable" not in done.stderr


def test_listings_of_scores_no_job_would_have_are_valid_json_and_read_as_never(redis_server, r):
    """Anything can write inf or 1e300 as a score: --json stays JSON, the table stays short."""
    r.zadd("schedule", {json.dumps({"class": "A", "jid": "a" * 24, "args": []}): float("inf"),
                        json.dumps({"class": "B", "jid": "b" * 24, "args": []}): 1e300})
    listed = kiq(redis_server.url, "scheduled", "--json")
    assert listed.returncode == 0
    strict = json.loads(listed.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert sorted(str(entry["at"]) for entry in strict) == ["1e+300", "inf"]
    table = kiq(redis_server.url, "scheduled")
    assert table.stdout.count("never") == 2 and "0000000" not in table.stdout


def test_enqueue_without_a_class_name_or_with_json_nested_too_deep_is_a_usage_error(redis_server, r):
    result = kiq(redis_server.url, "enqueue", "", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "class name is a non-empty string" in result.stderr
    deep = kiq(redis_server.url, "enqueue", "EchoJob", "[" * 5000 + "]" * 5000)
    assert deep.returncode == 2 and "nested too deep" in deep.stderr and "Traceback" not in deep.stderr
    huge = kiq(redis_server.url, "retries", "--limit", "99999999999999999999")
    assert huge.returncode == 2 and "--limit" in huge.stderr and "redis unavailable" not in huge.stderr
    for seconds in ("nan", "inf", "1e300"):
        never = kiq(redis_server.url, "enqueue", "EchoJob", "--in", seconds)
        assert never.returncode == 2
        assert f"--in {float(seconds):g} is no time a job can wait for" in never.stderr
    assert r.keys("*") == []


# -- acting on jobs a running kiq really failed ------------------------------


def test_retry_and_kill_a_job_that_really_failed(redis_server, r, client, start_kiq):
    import sample_jobs

    url = redis_server.url
    start_kiq(**FAST_BEATS)
    handle = client.enqueue(sample_jobs.FailJob, ["a"])
    wait_for(lambda: r.zcard("retry") == 1)
    [entry] = ok_json(url, "retries")
    assert (entry["jid"], entry["error_class"]) == (handle.jid, "ValueError")
    assert entry["error_message"] == "boom a"
    assert entry["retry_count"] == 0 and entry["at"] > time.time() + 5  # not due for a while

    assert ok(url, "retries", "retry", handle.jid).strip() == "retry: 1 job(s)"
    wait_for(lambda: r.llen("attempts") == 2)
    # It failed again and is back, its try given back by the manual retry.
    wait_for(lambda: r.zcard("retry") == 1)
    [again] = ok_json(url, "retries")
    assert again["jid"] == handle.jid and again["retry_count"] == 0
    assert "retried_at" in json.loads(r.zrange("retry", 0, 0)[0])

    assert ok(url, "retries", "kill", handle.jid).strip() == "kill: 1 job(s)"
    retries, dead_set = outputs(url, ["retries", "--json"], ["dead", "--json"])
    assert json.loads(retries) == []
    [dead] = json.loads(dead_set)
    assert dead["jid"] == handle.jid and dead["error_message"] == "boom a"
    assert r.llen("attempts") == 2  # killed: it does not run

    assert ok(url, "dead", "retry", handle.jid).strip() == "retry: 1 job(s)"
    wait_for(lambda: r.llen("attempts") == 3)
    # Killed with its one retry left (retry = 1): the retry from the dead set gives its try back,
    # as Sidekiq's does (retry_count one back), so its failure files it in the retry set again.
    wait_for(lambda: r.zcard("retry") == 1)
    final = json.loads(r.zrange("retry", 0, 0)[0])
    assert final["jid"] == handle.jid and final["retry_count"] == 0 and r.zcard("dead") == 0


def test_dead_retry_all_runs_really_dead_jobs_again(redis_server, r, client, start_kiq):
    import sample_jobs

    url = redis_server.url
    kiq_ = start_kiq(**FAST_BEATS)
    to_dead = [client.enqueue(sample_jobs.StraightToDeadJob).jid for _ in range(3)]
    wait_for(lambda: r.zcard("dead") == 3)
    wait_for(lambda: r.get("stat:failed") == "3")
    listing, stats = outputs(url, ["dead", "--json"], ["stats", "--json"])
    assert {entry["jid"] for entry in json.loads(listing)} == set(to_dead)
    assert all(entry["error_message"] == "to the morgue" for entry in json.loads(listing))
    assert json.loads(stats)["failed"] == 3

    # Stopped first: `dead retry --all` racing a kiq that kills the jobs again retries them again
    # (see test_api.py::test_retry_all_leaves_entries_that_arrive_while_it_runs).
    kiq_.signal(signal.SIGTERM)
    assert kiq_.wait() == 0
    assert ok(url, "dead", "retry", "--all").strip() == "retry: 3 job(s)"
    assert r.zcard("dead") == 0 and r.llen("queue:default") == 3

    start_kiq(**FAST_BEATS)
    # They ran again, failed again and died again, now as a retried job.
    wait_for(lambda: r.get("stat:failed") == "6")
    entries = wait_for(lambda: len(e := [json.loads(raw) for raw in r.zrange("dead", 0, -1)]) == 3 and e)
    assert {e["jid"] for e in entries} == set(to_dead)
    assert all(e["retry_count"] == 0 and "retried_at" in e for e in entries)  # -1 by the retry, +1


TRACED = """
import kiq


class AdminTracedJob(kiq.Job):
    backtrace = True
    retry = 1

    def perform(self, token):
        explode(token)


def explode(token):
    raise ValueError(f"traced {token}")
"""


def test_retries_and_dead_show_the_backtrace_a_worker_kept(redis_server, r, client, start_kiq, tmp_path):
    """``backtrace = True`` on the class (and ``set(backtrace=2)``) reach a real worker, whose failure
    keeps Sidekiq's ``error_backtrace``; ``show`` prints the job, its error and those frames."""
    module = tmp_path / "traced_jobs.py"  # start_kiq puts tmp_path on the workers' path
    module.write_text(TRACED)
    spec = importlib.util.spec_from_file_location("traced_jobs", module)
    assert spec is not None and spec.loader is not None
    traced = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(traced)
    url = redis_server.url
    start_kiq(require=["traced_jobs"], **FAST_BEATS)
    retried = traced.AdminTracedJob.perform_later("a")
    died = traced.AdminTracedJob.set(retry=0, backtrace=2).perform_later("b")
    wait_for(lambda: r.zcard("retry") == 1 and r.zcard("dead") == 1, timeout=30)

    [entry] = [json.loads(raw) for raw in r.zrange("retry", 0, 0)]
    frames = decode_backtrace(entry["error_backtrace"])
    assert frames[0].startswith(f"{module}:") and frames[0].endswith(":in explode"), frames
    assert frames[1].startswith(f"{module}:") and frames[1].endswith(":in perform"), frames
    assert len(frames) > 2  # kiq's own frames follow
    shown = ok(url, "retries", "show", retried.jid)
    assert f"jid         {retried.jid}" in shown and "class       AdminTracedJob" in shown
    assert "error       ValueError: traced a" in shown
    listed = shown.split("backtrace   (innermost first)\n")[1].splitlines()
    assert listed == [f"  {frame}" for frame in frames]
    [data] = ok_json(url, "retries", "show", retried.jid)
    assert data["set"] == "retry" and data["job"]["jid"] == retried.jid and data["backtrace"] == frames

    [dead] = ok_json(url, "dead", "show", died.jid)
    assert dead["set"] == "dead" and dead["job"]["backtrace"] == 2 and dead["backtrace"] == frames[:2]
    assert "ValueError: traced b" in ok(url, "dead", "show", died.jid)

    missing = kiq(url, "dead", "show", died.jid, "0" * 24)
    assert missing.returncode == 1 and f"not found: {'0' * 24}" in missing.stderr
    assert "traced b" in missing.stdout


def test_show_says_when_a_failed_job_kept_no_backtrace(redis_server, r):
    r.zadd("dead", {dump(sidekiq_failure(1)): NOW})
    [entry] = r.zrange("dead", 0, 0)
    shown = ok(redis_server.url, "dead", "show", json.loads(entry)["jid"])
    assert "backtrace   none kept (set backtrace = True on the job class to keep one)" in shown
    unknown = {**sidekiq_failure(2), "backtrace": True, "error_class": "kiq.UnknownJobError"}
    r.zadd("dead", {dump(unknown): NOW})
    shown = ok(redis_server.url, "dead", "show", unknown["jid"])
    assert "backtrace   none: nothing the job raised (a class no worker knew)" in shown


# -- quiet and stop against a running kiq -------------------------------------


def test_quiet_all_then_stop_one_identity(redis_server, r, start_kiq):
    url = redis_server.url
    kiq_ = start_kiq(processes=2, **FAST_BEATS)
    workers = kiq_.wait_workers(2)
    wait_for(lambda: r.scard("processes") == 2)
    live = ok_json(url, "processes")
    assert {p["info"]["pid"] for p in live} == set(workers)
    assert not any(p["quiet"] for p in live)

    done = kiq(url, "quiet", "--all", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"sent": sorted(p["identity"] for p in live), "not_found": [],
                                       "failed": {}}
    wait_for(lambda: all(r.hget(p["identity"], "quiet") == "true" for p in live))
    raw, text = outputs(url, ["processes", "--json"], ["processes"])
    assert all(p["quiet"] for p in json.loads(raw))
    lines = text.splitlines()
    assert len(lines) == 3 and all("  quiet  " in line for line in lines[1:])
    assert kiq_.workers() == workers  # quiet, still running

    first, second = live
    done = kiq(url, "stop", first["identity"], "nohost:1:000000000000")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"stop: {first['identity']}", "not found: nohost:1:000000000000"]
    wait_for(lambda: not alive(first["info"]["pid"]), timeout=15)
    wait_for(lambda: r.smembers("processes") == {second["identity"]}, timeout=10)
    assert [p["identity"] for p in ok_json(url, "processes")] == [second["identity"]]
    assert alive(second["info"]["pid"]) and kiq_.process.poll() is None
    assert kiq_.workers() == [second["info"]["pid"]]  # a stop by request is not replaced
    assert not r.exists(first["identity"])


def test_quiet_and_stop_send_through_the_signals_list(redis_server, r):
    url = redis_server.url
    heartbeat(r, "web-1:101:0a0a0a0a0a0a")
    heartbeat(r, "web-2:202:0b0b0b0b0b0b")
    r.sadd("processes", "web-3:303:0c0c0c0c0c0c")  # expired: not live, not signalled

    assert ok(url, "quiet", "web-2:202:0b0b0b0b0b0b").strip() == "quiet: web-2:202:0b0b0b0b0b0b"
    assert r.lrange("web-2:202:0b0b0b0b0b0b-signals", 0, -1) == ["TSTP"]
    assert not r.exists("web-1:101:0a0a0a0a0a0a-signals")

    done = kiq(url, "stop", "--all", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["sent"] == ["web-1:101:0a0a0a0a0a0a", "web-2:202:0b0b0b0b0b0b"]
    assert r.lrange("web-1:101:0a0a0a0a0a0a-signals", 0, -1) == ["TERM"]
    assert r.lrange("web-2:202:0b0b0b0b0b0b-signals", 0, -1) == ["TERM", "TSTP"]
    assert 55 <= r.ttl("web-1:101:0a0a0a0a0a0a-signals") <= 60
    assert not r.exists("web-3:303:0c0c0c0c0c0c-signals")

    done = kiq(url, "quiet", "web-3:303:0c0c0c0c0c0c", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"sent": [], "not_found": ["web-3:303:0c0c0c0c0c0c"], "failed": {}}
    assert not r.exists("web-3:303:0c0c0c0c0c0c-signals")

    r.delete("web-1:101:0a0a0a0a0a0a-signals", "web-2:202:0b0b0b0b0b0b-signals")
    r.hset("web-1:101:0a0a0a0a0a0a-signals", "x", "y")  # of another type: the others are still signalled
    done = kiq(url, "quiet", "--all")
    assert done.returncode == 3, done.stderr
    assert "quiet: web-2:202:0b0b0b0b0b0b" in done.stdout
    assert "failed: web-1:101:0a0a0a0a0a0a: " in done.stdout
    assert r.lrange("web-2:202:0b0b0b0b0b0b-signals", 0, -1) == ["TSTP"]


# -- connection options, usage errors, exit codes -----------------------------


def test_config_file_and_namespace_flag_choose_where_to_look(redis_server, r, tmp_path):
    url = redis_server.url
    r.sadd("shop:queues", "orders")
    r.lpush("shop:queue:orders", dump(sidekiq_job(1, "orders")))
    r.sadd("queues", "default")
    config = tmp_path / "kiq.yml"
    config.write_text(f"redis_url: {url}\nnamespace: shop\nprocesses: 2\n")
    other = sample_env(f"redis://127.0.0.1:{free_port()}/0")  # the environment points elsewhere

    done = kiq(None, "queues", "--json", "-c", str(config), env=other)
    assert done.returncode == 0, done.stderr
    assert [q["queue"] for q in json.loads(done.stdout)] == ["orders"]
    flagged, plain, _ = outputs(url, ["queues", "--json", "--namespace", "shop"], ["queues", "--json"],
                                ["enqueue", "RecordJob", "y", "--namespace", "shop", "-q", "orders"])
    assert [q["queue"] for q in json.loads(flagged)] == ["orders"]
    assert [q["queue"] for q in json.loads(plain)] == ["default"]
    assert r.llen("shop:queue:orders") == 2 and not r.exists("queue:orders")


def test_default_redis_url_comes_from_the_environment(redis_server, r):
    r.sadd("queues", "from-env")
    done = kiq(None, "queues", "--json", env=sample_env(redis_server.url))
    assert done.returncode == 0, done.stderr
    assert [q["queue"] for q in json.loads(done.stdout)] == ["from-env"]


USAGE_ERRORS = [
    (["retries", "retry"], "needs job ids or --all"),
    (["retries", "show"], "show needs job ids (not --all)"),
    (["dead", "show", "--all"], "show needs job ids (not --all)"),
    (["dead", "delete", "--all", "0" * 24], "not both"),
    (["dead", "kill", "--all"], "Invalid value"),
    (["quiet"], "needs process identities or --all"),
    (["stop", "--all", "web-1:1:aa"], "not both"),
    (["enqueue", "RecordJob", "-k", "novalue"], "use key=value"),
    (["bogus"], "No such command"),
]


def test_usage_errors_exit_2_and_change_nothing(redis_server, r):
    r.zadd("retry", {dump(sidekiq_failure(1)): NOW + 60})
    r.zadd("dead", {dump(sidekiq_failure(2)): NOW})
    r.zadd("schedule", {dump(sidekiq_job(0, at=NOW + 60)): NOW + 60})
    heartbeat(r, "web-1:1:aa")
    results = kiq_many(redis_server.url, [args for args, _ in USAGE_ERRORS])
    for (args, message), done in zip(USAGE_ERRORS, results, strict=True):
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    assert (r.zcard("retry"), r.zcard("dead"), r.zcard("schedule"), r.llen("queue:default")) == (1, 1, 1, 0)
    assert not r.exists("web-1:1:aa-signals")


BAD_CONFIGS = [
    ("redis_url: [not: valid\n", "not valid YAML"),
    ("bogus_key: 1\n", "bogus_key: unknown setting"),
    ("redis_url: localhost\n", "redis_url: must be a URL"),
    (None, "cannot read"),
]


def test_a_bad_config_file_exits_2(redis_server, r, tmp_path):
    r.zadd("dead", {dump(sidekiq_failure(1)): NOW})
    commands = []
    for n, (content, _) in enumerate(BAD_CONFIGS):
        path = tmp_path / f"kiq-{n}.yml"
        if content is not None:
            path.write_text(content)
        commands.append(["dead", "retry", "--all", "-c", str(path)])
    results = kiq_many(None, commands, env=sample_env(redis_server.url))
    for (content, message), done in zip(BAD_CONFIGS, results, strict=True):
        assert done.returncode == 2, (content, done.stdout, done.stderr)
        assert done.stderr.startswith("kiq: bad config:") and message in done.stderr, (content, done.stderr)
    assert r.zcard("dead") == 1


UNREACHABLE = [["stats"], ["processes"], ["dead", "retry", "--all"], ["enqueue", "RecordJob", "x"],
               ["quiet", "--all"]]


def test_unreachable_redis_exits_3(redis_server, r):
    r.zadd("dead", {dump(sidekiq_failure(1)): NOW})
    closed = f"redis://user:s3cret-pw@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    # The flag wins over KIQ_REDIS_URL in the environment, which points at a live Redis.
    results = kiq_many(closed, UNREACHABLE, env=sample_env(redis_server.url))
    assert time.monotonic() - started < 20
    for args, done in zip(UNREACHABLE, results, strict=True):
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        assert "redis unavailable" in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert "s3cret-pw" not in done.stdout + done.stderr
    assert r.zcard("dead") == 1 and r.llen("queue:default") == 0


def test_help_lists_every_operator_command():
    done = kiq(None, "--help", env=sample_env(""))
    assert done.returncode == 0
    for command in ("stats", "queues", "processes", "retries", "dead", "scheduled", "find", "enqueue",
                    "quiet", "stop", "web"):
        assert f"  {command}" in done.stdout

"""Unit tests for kiq.heartbeat: the process entry Sidekiq 6.4's API and Web UI read."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import pytest
import redis

import kiq
from kiq.connection import connect
from kiq.heartbeat import Heartbeat, Lapsed, identity
from kiq.keys import Keys

IDENT = "web-1:4242:0a1b2c3d4e5f"
INFO = {
    "hostname": "web-1",
    "started_at": 1_700_000_000.5,
    "pid": 4242,
    "tag": "blue",
    "concurrency": 10,
    "queues": ["critical", "default"],
    "labels": ["reliable"],
}


class Running:
    """What the worker reports as running: thread id -> {queue, payload, run_at}."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}

    def __call__(self) -> dict[str, dict[str, Any]]:
        return dict(self.jobs)


@pytest.fixture
def running() -> Running:
    return Running()


@pytest.fixture
def beat(redis_server, running) -> Heartbeat:
    return Heartbeat(connect(redis_server.url), Keys(), IDENT, INFO, running)


def sidekiq_6_process(r, ident: str, prefix: str = "") -> dict[str, Any]:
    """What Sidekiq 6.4's ProcessSet#each builds from one entry (HMGET of these six fields)."""
    info, busy, beat_at, quiet, rss, rtt = r.hmget(f"{prefix}{ident}", "info", "busy", "beat", "quiet",
                                                   "rss", "rtt_us")
    assert info is not None
    return {**json.loads(info), "busy": int(busy), "beat": float(beat_at), "quiet": quiet,
            "rss": int(rss), "rtt_us": int(rtt)}


def test_identity_is_hostname_pid_nonce():
    assert identity(123, "abcdef") == f"{socket.gethostname()}:123:abcdef"


def test_beat_registers_the_process(r, beat):
    before = time.time()
    assert beat.beat(create=True, quiet=False) is None
    after = time.time()
    assert r.smembers("processes") == {IDENT}
    process = sidekiq_6_process(r, IDENT)
    assert {k: process[k] for k in INFO} == INFO
    assert process["identity"] == IDENT
    assert process["version"] == kiq.__version__
    assert set(json.loads(r.hget(IDENT, "info"))) == {*INFO, "identity", "version"}
    assert process["busy"] == 0
    assert before <= process["beat"] <= after
    assert process["quiet"] == "false"
    assert process["rss"] > 0
    assert process["rtt_us"] >= 0
    assert set(r.hkeys(IDENT)) == {"info", "busy", "beat", "quiet", "rss", "rtt_us", "prefetched"}
    assert r.hget(IDENT, "prefetched") == "{}"  # kiq's own field; Sidekiq reads none of it


def test_entry_expires_about_sixty_seconds_after_a_beat(r, beat):
    beat.beat(create=True, quiet=False)
    assert 55 <= r.ttl(IDENT) <= 60


def test_ttl_can_be_set(r, redis_server, running):
    running.jobs = {"processor-0": {"queue": "q", "payload": "{}", "run_at": 1}}
    Heartbeat(connect(redis_server.url), Keys(), IDENT, INFO, running, ttl=15).beat(create=True, quiet=False)
    assert 10 <= r.ttl(IDENT) <= 15
    for key in (f"{IDENT}:work", f"{IDENT}:workers"):
        assert 25 <= r.ttl(key) <= 30


def test_sub_second_ttl_keeps_the_entry(r, redis_server, running):
    Heartbeat(connect(redis_server.url), Keys(), IDENT, INFO, running, ttl=0.5).beat(create=True, quiet=False)
    assert r.exists(IDENT)
    assert 0 < r.pttl(IDENT) <= 500


def test_quiet_is_the_string_true(r, beat):
    beat.beat(create=True, quiet=True)
    assert r.hget(IDENT, "quiet") == "true"
    beat.beat(create=True, quiet=False)
    assert r.hget(IDENT, "quiet") == "false"


def test_rss_is_this_process_in_kilobytes(r, beat):
    beat.beat(create=True, quiet=False)
    with open(f"/proc/{os.getpid()}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    expected = int(line.split()[1])
    assert abs(int(r.hget(IDENT, "rss")) - expected) < expected * 0.5


def test_beat_time_advances(r, beat):
    beat.beat(create=True, quiet=False)
    first = float(r.hget(IDENT, "beat"))
    time.sleep(0.01)
    beat.beat(create=True, quiet=False)
    assert float(r.hget(IDENT, "beat")) > first


def test_running_jobs_in_work_and_workers(r, beat, running):
    running.jobs = {
        "processor-0": {"queue": "critical", "payload": '{"class":"A","args":[1]}', "run_at": 1_700_000_100},
        "processor-3": {"queue": "default", "payload": '{"class":"B","args":[]}', "run_at": 1_700_000_200},
    }
    beat.beat(create=True, quiet=False)
    for key in (f"{IDENT}:work", f"{IDENT}:workers"):
        stored = {tid: json.loads(value) for tid, value in r.hgetall(key).items()}
        assert stored == running.jobs
        assert 115 <= r.ttl(key) <= 120  # twice the TTL: a sweep after the entry expired reads them
    assert r.hget(IDENT, "busy") == "2"


def test_finished_jobs_leave_work_and_workers(r, beat, running):
    running.jobs = {"processor-0": {"queue": "q", "payload": "{}", "run_at": 1},
                    "processor-1": {"queue": "q", "payload": "{}", "run_at": 2}}
    beat.beat(create=True, quiet=False)
    running.jobs = {"processor-1": {"queue": "q", "payload": "{}", "run_at": 2}}
    beat.beat(create=True, quiet=False)
    assert set(r.hkeys(f"{IDENT}:work")) == {"processor-1"}
    assert set(r.hkeys(f"{IDENT}:workers")) == {"processor-1"}
    running.jobs = {}
    beat.beat(create=True, quiet=False)
    assert not r.exists(f"{IDENT}:work", f"{IDENT}:workers")
    assert r.hget(IDENT, "busy") == "0"


def test_running_jobs_are_written_when_they_change_and_only_kept_alive_between(r, beat, running):
    """A job of megabytes written again at every beat held Redis for half a second each time."""
    big = '{"args":["' + "x" * 100_000 + '"]}'
    running.jobs = {"processor-0": {"queue": "q", "payload": big, "run_at": 1}}
    beat.beat(create=True, quiet=False)
    for key in (f"{IDENT}:work", f"{IDENT}:workers"):
        r.hset(key, "marker", "left by the test")  # a rewrite would drop it
        r.expire(key, 30)
    beat.beat(quiet=False)
    for key in (f"{IDENT}:work", f"{IDENT}:workers"):
        assert r.hget(key, "marker") == "left by the test" and r.ttl(key) > 100
    r.delete(f"{IDENT}:work", f"{IDENT}:workers")  # a Redis restarted without its data, a flush
    beat.beat(quiet=False)
    for key in (f"{IDENT}:work", f"{IDENT}:workers"):
        assert {tid: json.loads(value) for tid, value in r.hgetall(key).items()} == running.jobs
    r.hset(f"{IDENT}:work", "marker", "left by the test")
    running.jobs["processor-1"] = {"queue": "q", "payload": "{}", "run_at": 2}
    beat.beat(quiet=False)
    assert set(r.hkeys(f"{IDENT}:work")) == {"processor-0", "processor-1"}


def test_remote_signals_come_back_in_the_order_sent(r, beat):
    # Sidekiq's Web UI (Sidekiq::Process#signal) LPUSHes; the process pops from the other end.
    r.lpush(f"{IDENT}-signals", "TSTP")
    r.lpush(f"{IDENT}-signals", "TERM")
    assert beat.beat(create=True, quiet=False) == "TSTP"
    assert beat.beat(create=True, quiet=True) == "TERM"
    assert beat.beat(create=True, quiet=True) is None
    assert not r.exists(f"{IDENT}-signals")


def test_keys_of_another_type_do_not_stop_the_beat(r, beat):
    """Written by anything with access to Redis: the entry is still written and kept alive."""
    r.set(f"{IDENT}-signals", "junk")
    r.set("processes", "junk")
    r.set("kiq:wip", "junk")
    assert beat.beat(create=True, quiet=False) is None
    assert r.hget(IDENT, "quiet") == "false" and r.pttl(IDENT) > 0
    r.delete(f"{IDENT}-signals")
    r.lpush(f"{IDENT}-signals", "TSTP")
    assert beat.beat(create=True, quiet=False) == "TSTP"


def test_another_processs_signal_is_not_ours(r, beat):
    r.lpush("web-2:1:ffff-signals", "TERM")
    assert beat.beat(create=True, quiet=False) is None
    assert r.llen("web-2:1:ffff-signals") == 1


def test_namespace(r, redis_server, running):
    running.jobs = {"processor-0": {"queue": "q", "payload": "{}", "run_at": 1}}
    beat = Heartbeat(connect(redis_server.url), Keys("app"), IDENT, INFO, running)
    r.lpush(f"app:{IDENT}-signals", "TSTP")
    assert beat.beat(create=True, quiet=False) == "TSTP"
    assert set(r.keys("*")) == {"app:processes", f"app:{IDENT}", f"app:{IDENT}:work", f"app:{IDENT}:workers"}
    assert sidekiq_6_process(r, IDENT, prefix="app:")["busy"] == 1


def test_a_beat_that_finds_its_entry_expired_says_so_and_writes_nothing(r, beat, running):
    beat.beat(create=True, quiet=False)
    r.delete(IDENT)  # expired: a pause or partition longer than the TTL
    running.jobs = {"processor-0": {"queue": "q", "payload": "{}", "run_at": 1}}
    with pytest.raises(Lapsed):
        beat.beat(quiet=False)
    assert not r.exists(IDENT) and not r.exists(f"{IDENT}:work")


def test_a_beat_at_maxmemory_keeps_the_entry_alive(r, redis_server, beat):
    """With ``noeviction``, Redis refuses writes that may grow memory; the heartbeat extends
    its TTL first, which Redis accepts, and then the rest of its writes with it."""
    beat.beat(create=True, quiet=False)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", r.info("memory")["used_memory"])
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.lpush("queue:default", "x" * 1000)
        r.expire(IDENT, 2)
        beat.beat(quiet=True)
        assert r.ttl(IDENT) > 50 and r.hget(IDENT, "quiet") == "true"
    finally:
        r.config_set("maxmemory", 0)

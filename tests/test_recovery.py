"""Unit tests for kiq.recovery: putting a worker's in-progress jobs back at the front of their queues."""

from __future__ import annotations

import hashlib
import json

import pytest

from kiq.connection import connect
from kiq.keys import Keys
from kiq.recovery import Recovery

DEAD = "host-a:100:aaaaaa"
ALIVE = "host-b:200:bbbbbb"
PREFIXED = "host-a:100:aaaaaa0"  # starts like DEAD, yet is another identity


@pytest.fixture
def conn(redis_server):
    return connect(redis_server.url)


def push(r, queue: str, *jobs: str, prefix: str = "") -> None:
    """Enqueue as producers do: LPUSH, so the first job given is taken first."""
    r.sadd(f"{prefix}queues", queue)
    for job in jobs:
        r.lpush(f"{prefix}queue:{queue}", job)


def take(r, identity: str, queue: str, count: int, prefix: str = "") -> list[str]:
    """Take jobs as a worker does: from the right of the queue into the left of its in-progress list."""
    r.sadd(f"{prefix}kiq:wip", f"{identity}|{queue}")
    return [r.lmove(f"{prefix}queue:{queue}", f"{prefix}kiq:wip:{identity}|{queue}", "RIGHT", "LEFT")
            for _ in range(count)]


def consume(r, queue: str, prefix: str = "") -> list[str]:
    """Every job of a queue, in the order a worker would take them."""
    return list(reversed(r.lrange(f"{prefix}queue:{queue}", 0, -1)))


def register_process(r, identity: str, prefix: str = "") -> None:
    r.sadd(f"{prefix}processes", identity)
    r.hset(f"{prefix}{identity}", mapping={"info": "{}", "busy": 1})
    r.hset(f"{prefix}{identity}:work", "t1", "{}")
    r.hset(f"{prefix}{identity}:workers", "t1", "{}")


def test_requeue_all_puts_jobs_back_in_front_in_the_order_taken(r, conn):
    push(r, "default", *(f"d{n}" for n in range(6)))
    push(r, "critical", *(f"c{n}" for n in range(3)))
    assert take(r, DEAD, "default", 4) == ["d0", "d1", "d2", "d3"]
    assert take(r, DEAD, "critical", 2) == ["c0", "c1"]
    register_process(r, DEAD)

    assert Recovery(conn, Keys()).requeue_all(DEAD) == 6

    assert consume(r, "default") == ["d0", "d1", "d2", "d3", "d4", "d5"]
    assert consume(r, "critical") == ["c0", "c1", "c2"]
    assert r.keys("kiq:wip:*") == []
    assert not r.exists("kiq:wip")


def test_requeue_all_forgets_the_process(r, conn):
    register_process(r, DEAD)
    register_process(r, ALIVE)
    r.rpush(f"{DEAD}-signals", "TSTP")
    Recovery(conn, Keys()).requeue_all(DEAD)
    assert r.smembers("processes") == {ALIVE}
    assert not r.exists(DEAD, f"{DEAD}:work", f"{DEAD}:workers")
    assert r.exists(ALIVE, f"{ALIVE}:work", f"{ALIVE}:workers") == 3


def test_requeue_all_leaves_other_identities_alone(r, conn):
    push(r, "default", *(f"j{n}" for n in range(6)))
    take(r, ALIVE, "default", 2)
    take(r, PREFIXED, "default", 1)
    take(r, DEAD, "default", 2)
    register_process(r, PREFIXED)

    assert Recovery(conn, Keys()).requeue_all(DEAD) == 2

    assert consume(r, "default") == ["j3", "j4", "j5"]
    assert r.lrange(f"kiq:wip:{ALIVE}|default", 0, -1) == ["j1", "j0"]
    assert r.lrange(f"kiq:wip:{PREFIXED}|default", 0, -1) == ["j2"]
    assert r.smembers("kiq:wip") == {f"{ALIVE}|default", f"{PREFIXED}|default"}
    assert r.sismember("processes", PREFIXED)
    assert r.exists(PREFIXED)


def test_requeue_all_adds_the_queue_to_queues(r, conn):
    r.lpush(f"kiq:wip:{DEAD}|forgotten", "job")
    r.sadd("kiq:wip", f"{DEAD}|forgotten")
    assert Recovery(conn, Keys()).requeue_all(DEAD) == 1
    assert r.smembers("queues") == {"forgotten"}
    assert r.lrange("queue:forgotten", 0, -1) == ["job"]


def test_requeue_all_with_nothing_in_progress(r, conn):
    register_process(r, DEAD)
    assert Recovery(conn, Keys()).requeue_all(DEAD) == 0
    assert r.scard("processes") == 0
    assert not r.exists("queues")


def test_requeue_all_in_a_namespace(r, conn):
    ns = "app:"
    push(r, "default", "a", "b", "c", prefix=ns)
    take(r, DEAD, "default", 2, prefix=ns)
    register_process(r, DEAD, prefix=ns)
    take(r, DEAD, "default", 0)  # an unprefixed registration of the same identity stays untouched
    assert Recovery(conn, Keys("app")).requeue_all(DEAD) == 2
    assert consume(r, "default", prefix=ns) == ["a", "b", "c"]
    assert not r.exists(f"{ns}{DEAD}", f"{ns}processes", f"{ns}kiq:wip")
    assert r.smembers("kiq:wip") == {f"{DEAD}|default"}


def test_requeue_all_keeps_payload_bytes_exactly(r, conn, redis_server):
    import redis

    raw = redis.Redis.from_url(redis_server.url)
    odd = b"\xff\xfe not utf-8 \x00"
    raw.lpush("queue:default", odd)
    raw.sadd("kiq:wip", f"{DEAD}|default")
    raw.lmove("queue:default", f"kiq:wip:{DEAD}|default", "RIGHT", "LEFT")
    assert Recovery(conn, Keys()).requeue_all(DEAD) == 1
    assert raw.lrange("queue:default", 0, -1) == [odd]


def test_give_back_requeues_only_the_named_jobs_in_front(r, conn):
    push(r, "default", *(f"j{n}" for n in range(6)))
    push(r, "low", "l0", "l1")
    take(r, DEAD, "default", 4)  # j0 running; j1..j3 taken but not started
    take(r, DEAD, "low", 1)

    moved = Recovery(conn, Keys()).give_back(DEAD, [("default", "j1"), ("default", "j2"), ("default", "j3"),
                                                    ("low", "l0")])
    assert moved == 4
    assert consume(r, "default") == ["j1", "j2", "j3", "j4", "j5"]
    assert consume(r, "low") == ["l0", "l1"]
    assert r.lrange(f"kiq:wip:{DEAD}|default", 0, -1) == ["j0"]
    assert r.llen(f"kiq:wip:{DEAD}|low") == 0


def test_give_back_skips_jobs_not_in_progress(r, conn):
    push(r, "default", "a", "b")
    take(r, DEAD, "default", 1)
    assert Recovery(conn, Keys()).give_back(DEAD, [("default", "a"), ("default", "zzz")]) == 1
    assert consume(r, "default") == ["a", "b"]


def test_give_back_does_not_touch_the_process_entry(r, conn):
    push(r, "default", "a")
    take(r, DEAD, "default", 1)
    register_process(r, DEAD)
    Recovery(conn, Keys()).give_back(DEAD, [("default", "a")])
    assert r.sismember("processes", DEAD)
    assert r.sismember("kiq:wip", f"{DEAD}|default")
    assert Recovery(conn, Keys()).give_back(DEAD, []) == 0


def test_give_back_removes_one_copy_of_a_duplicated_payload(r, conn):
    push(r, "default", "same", "same")
    take(r, DEAD, "default", 2)
    assert Recovery(conn, Keys()).give_back(DEAD, [("default", "same")]) == 1
    assert r.lrange(f"kiq:wip:{DEAD}|default", 0, -1) == ["same"]
    assert consume(r, "default") == ["same"]


# Host loss: the sweep


def job(jid: str) -> str:
    return json.dumps({"class": "SomeJob", "args": [jid], "jid": jid, "queue": "default", "retry": True})


def test_sweep_requeues_only_identities_without_a_heartbeat(r, conn):
    push(r, "default", *(f"j{n}" for n in range(6)))
    take(r, DEAD, "default", 2)
    take(r, ALIVE, "default", 2)
    register_process(r, ALIVE)
    r.sadd("processes", DEAD)  # its hash expired with its heartbeat

    assert Recovery(conn, Keys()).sweep() == 2

    assert consume(r, "default") == ["j0", "j1", "j4", "j5"]
    assert r.lrange(f"kiq:wip:{ALIVE}|default", 0, -1) == ["j3", "j2"]
    assert r.smembers("kiq:wip") == {f"{ALIVE}|default"}
    assert r.smembers("processes") == {ALIVE}


def test_sweep_with_every_heartbeat_alive_moves_nothing(r, conn):
    push(r, "default", "a", "b")
    take(r, ALIVE, "default", 1)
    register_process(r, ALIVE)
    assert Recovery(conn, Keys()).sweep() == 0
    assert r.lrange(f"kiq:wip:{ALIVE}|default", 0, -1) == ["a"]
    assert r.smembers("processes") == {ALIVE}


def test_sweep_in_a_namespace(r, conn):
    push(r, "default", "a", prefix="app:")
    take(r, DEAD, "default", 1, prefix="app:")
    push(r, "default", "b")
    take(r, DEAD, "default", 1)
    assert Recovery(conn, Keys("app")).sweep() == 1
    assert consume(r, "default", prefix="app:") == ["a"]
    assert r.lrange(f"kiq:wip:{DEAD}|default", 0, -1) == ["b"]


# Poison pills


def digest(payload: str) -> str:
    return hashlib.sha1(payload.encode()).hexdigest()


def crash_with(r, conn, times: int) -> None:
    """Take the queue's next job into DEAD's in-progress list and have DEAD die running it,
    ``times`` times."""
    for _ in range(times):
        if r.llen("queue:default") == 0:
            return
        [running] = take(r, DEAD, "default", 1)
        Recovery(conn, Keys()).requeue_all(DEAD, ["default"], [digest(running)])


def test_job_that_killed_its_worker_three_times_goes_to_dead(r, conn):
    payload = job("p" * 24)
    push(r, "default", payload)
    crash_with(r, conn, 2)
    assert consume(r, "default") == [payload]  # twice is still bad luck
    crash_with(r, conn, 1)
    assert r.llen("queue:default") == 0
    assert r.llen("kiq:poison") == 0
    [dead] = r.zrange("dead", 0, -1)
    buried = json.loads(dead)
    assert buried["jid"] == "p" * 24 and buried["args"] == ["p" * 24]
    assert buried["error_class"] == "kiq.PoisonPill"
    assert "3 times" in buried["error_message"]


def test_a_job_that_reaches_the_limit_at_crashes_it_shared_is_a_suspect_not_a_poison_pill(r, conn):
    """A SIGKILL names no culprit: every job running is charged, and jobs requeued together
    are taken together again. At the limit they wait as suspects, each to run alone; a
    suspect that then crashes its worker alone is the poison pill, and goes to dead."""
    pill, innocent = job("p" * 24), job("i" * 24)
    push(r, "default", pill, innocent)
    for _ in range(3):
        running = take(r, DEAD, "default", 2)
        Recovery(conn, Keys()).requeue_all(DEAD, ["default"], [digest(each) for each in running])
    assert r.zcard("dead") == 0 and r.llen("queue:default") == 0
    assert sorted(r.lrange("kiq:suspects:default", 0, -1)) == sorted([pill, innocent])
    wip = f"kiq:wip:{DEAD}|default"
    r.lrem("kiq:suspects:default", 1, pill)
    r.lpush(wip, pill)  # a worker took the pill alone, and it crashed that worker
    r.sadd("kiq:wip", f"{DEAD}|default")
    Recovery(conn, Keys()).requeue_all(DEAD, ["default"], [digest(pill)])
    assert [json.loads(each)["jid"] for each in r.zrange("dead", 0, -1)] == ["p" * 24]
    assert r.lrange("kiq:suspects:default", 0, -1) == [innocent]


def test_a_sweep_judges_alone_by_the_last_heartbeat(r, conn):
    payload, other = job("w" * 24), job("x" * 24)
    push(r, "default", payload, other)
    for _ in range(3):
        take(r, DEAD, "default", 2)
        for thread, running in (("t1", payload), ("t2", other)):
            r.hset(f"{DEAD}:work", thread, json.dumps({"queue": "default", "payload": running, "run_at": 0}))
        Recovery(conn, Keys()).sweep()
    assert r.zcard("dead") == 0
    assert sorted(r.lrange("kiq:suspects:default", 0, -1)) == sorted([payload, other])


def test_a_suspects_key_of_another_type_sends_the_job_back_to_its_queue(r, conn):
    payload, other = job("y" * 24), job("u" * 24)
    push(r, "default", payload, other)
    r.set("kiq:suspects:default", "x")
    for _ in range(3):
        running = take(r, DEAD, "default", 2)
        Recovery(conn, Keys()).requeue_all(DEAD, ["default"], [digest(each) for each in running])
    assert sorted(consume(r, "default")) == sorted([payload, other]) and r.zcard("dead") == 0


def test_stopping_worker_does_not_count_towards_poison(r, conn):
    payload = job("s" * 24)
    push(r, "default", payload)
    for _ in range(5):
        take(r, DEAD, "default", 1)
        Recovery(conn, Keys()).requeue_all(DEAD, ["default"], crashed=False)
    assert consume(r, "default") == [payload]
    assert r.zcard("dead") == 0


def test_sweeps_count_the_jobs_the_last_heartbeat_listed_as_running(r, conn):
    payload, prefetched = job("w" * 24), job("v" * 24)
    push(r, "default", payload, prefetched)
    for _ in range(3):
        take(r, DEAD, "default", 2)
        r.hset(f"{DEAD}:work", "t1", json.dumps({"queue": "default", "payload": payload, "run_at": 0}))
        Recovery(conn, Keys()).sweep()
        assert not r.exists(f"{DEAD}:work")
    assert consume(r, "default") == [prefetched]
    assert json.loads(r.zrange("dead", 0, -1)[0])["error_class"] == "kiq.PoisonPill"
    assert r.get(f"kiq:recoveries:{'v' * 24}") is None


def test_a_sweep_leaves_a_tombstone_for_the_swept_identity(r, conn):
    push(r, "default", "a")
    take(r, DEAD, "default", 1)
    Recovery(conn, Keys()).sweep()
    assert r.get(f"kiq:swept:{DEAD}") == "1"
    assert 0 < r.ttl(f"kiq:swept:{DEAD}") <= 24 * 3600


def test_only_the_jobs_running_at_the_crash_count_towards_poison(r, conn):
    """Prefetched jobs, and jobs finished but not yet acknowledged, are innocent; the same
    payload twice counts as often as it was running."""
    jobs = [job(f"{n:024d}") for n in range(5)]
    push(r, "default", *jobs)
    take(r, DEAD, "default", 5)
    running = [digest(jobs[1]), digest(jobs[3]), digest(jobs[3]), "0" * 40]
    assert Recovery(conn, Keys()).requeue_all(DEAD, ["default"], running) == 5
    counted = [r.get(f"kiq:recoveries:{n:024d}") for n in range(5)]
    assert counted == [None, "1", None, "1", None]
    assert consume(r, "default") == jobs  # all back, oldest first


def test_requeue_all_finds_the_lists_of_named_queues_that_the_registry_lost(r, conn):
    push(r, "default", "a")
    push(r, "low", "b")
    take(r, DEAD, "default", 1)
    take(r, DEAD, "low", 1)
    r.delete("kiq:wip")  # a sweep of a live worker, which died before its next beat
    assert Recovery(conn, Keys()).requeue_all(DEAD, ["default", "low"]) == 2
    assert consume(r, "default") == ["a"] and consume(r, "low") == ["b"]


# Strays after a lost reply


def test_requeue_strays_gives_back_what_the_worker_does_not_hold(r, conn):
    push(r, "default", "a", "b", "c", "d")
    take(r, DEAD, "default", 4)
    assert Recovery(conn, Keys()).requeue_strays(DEAD, ["b", "d"]) == 2
    assert consume(r, "default") == ["a", "c"]
    assert sorted(r.lrange(f"kiq:wip:{DEAD}|default", 0, -1)) == ["b", "d"]


def test_a_registry_member_that_is_none_of_kiq_s_does_not_stop_the_sweep(r, conn):
    push(r, "default", "a")
    take(r, DEAD, "default", 1)
    r.sadd("kiq:wip", "not-a-member-of-kiq")
    assert Recovery(conn, Keys()).sweep() == 1
    assert consume(r, "default") == ["a"]


def test_a_running_payload_nested_too_deep_is_requeued_but_counts_nothing(r, conn):
    """Its jid cannot be read, so no recovery is counted; the job still goes back, whether the
    ledger or the last heartbeat says it was running."""
    deep = "[" * 100_000 + "]" * 100_000
    push(r, "default", deep)
    take(r, DEAD, "default", 1)
    assert Recovery(conn, Keys()).requeue_all(DEAD, ["default"], [digest(deep)]) == 1
    take(r, DEAD, "default", 1)
    r.hset(f"{DEAD}:work", "t1", json.dumps({"queue": "default", "payload": deep, "run_at": 0}))
    assert Recovery(conn, Keys()).sweep() == 1
    assert consume(r, "default") == [deep]
    assert r.keys("kiq:recoveries:*") == []


# Keys of another type, written by anything with access to Redis: no job is lost


def test_a_queue_key_of_another_type_leaves_the_list_in_progress_for_a_later_sweep(r, conn):
    push(r, "default", "a")
    push(r, "low", "b")
    take(r, DEAD, "default", 1)
    take(r, DEAD, "low", 1)
    register_process(r, DEAD)
    r.delete("queue:low")
    r.hset("queue:low", "x", "y")
    assert Recovery(conn, Keys()).requeue_all(DEAD) == 1
    assert consume(r, "default") == ["a"]
    assert r.lrange(f"kiq:wip:{DEAD}|low", 0, -1) == ["b"] and f"{DEAD}|low" in r.smembers("kiq:wip")
    r.delete("queue:low")
    assert Recovery(conn, Keys()).sweep() == 1  # the process is gone; its list is still found
    assert consume(r, "low") == ["b"]


def test_one_process_s_broken_list_does_not_keep_the_sweep_from_the_others(r, conn):
    r.sadd("processes", "ghost:1:abc")
    r.sadd("kiq:wip", "ghost:1:abc|default")
    r.set("kiq:wip:ghost:1:abc|default", "x")
    for n in range(3):
        push(r, "default", f"j{n}")
        take(r, f"lost{n}:1:abc", "default", 1)
    assert Recovery(conn, Keys()).sweep() == 3
    assert sorted(consume(r, "default")) == ["j0", "j1", "j2"]


def test_give_back_and_strays_leave_a_job_whose_queue_key_is_of_another_type(r, conn):
    push(r, "default", "a", "s")
    push(r, "low", "b", "t")
    take(r, DEAD, "default", 2)
    take(r, DEAD, "low", 2)
    r.delete("queue:low")
    r.hset("queue:low", "x", "y")
    recovery = Recovery(conn, Keys())
    assert recovery.give_back(DEAD, [("default", "a"), ("low", "b")]) == 1
    assert recovery.requeue_strays(DEAD, []) == 1  # "s"; "t" stays
    assert r.lrange(f"kiq:wip:{DEAD}|low", 0, -1) == ["t", "b"]
    r.delete("queue:low")
    assert recovery.give_back(DEAD, [("low", "b")]) == 1
    assert recovery.requeue_strays(DEAD, []) == 1
    assert sorted(consume(r, "low")) == ["b", "t"] and sorted(consume(r, "default")) == ["a", "s"]


def test_a_recovery_counter_or_poison_list_of_another_type_still_requeues_the_job(r, conn):
    payload = job("q" * 24)
    push(r, "default", payload)
    r.hset(f"kiq:recoveries:{'q' * 24}", "x", "y")
    crash_with(r, conn, 1)
    assert consume(r, "default") == [payload]
    r.delete(f"kiq:recoveries:{'q' * 24}")
    r.set("kiq:poison", "x")
    crash_with(r, conn, 3)
    assert consume(r, "default") == [payload]  # never a poison pill while kiq:poison is no list


def test_poison_pills_wait_while_the_dead_set_key_is_of_another_type(r, conn):
    payload = job("z" * 24)
    push(r, "default", payload)
    r.set("dead", "x")
    crash_with(r, conn, 3)
    assert r.lrange("kiq:poison", 0, -1) == [payload]  # not lost, and the burial did not spin
    r.delete("dead")
    assert Recovery(conn, Keys()).bury_poison() == 1
    assert json.loads(r.zrange("dead", 0, -1)[0])["error_class"] == "kiq.PoisonPill"


def test_a_reclaim_goes_on_past_keys_of_another_type(r, conn):
    """A worker whose entry lapsed recreates it even when its in-progress list, processes or the
    registry hold another type. Not swept, it keeps the jobs it holds (its copies are the only
    ones), though nothing can be pushed into that list."""
    from kiq.lease import Reclaimer

    r.set(f"kiq:wip:{DEAD}|default", "x")
    r.set("processes", "x")
    r.set("kiq:wip", "x")
    reclaimer = Reclaimer(conn, Keys(), DEAD, 60.0, ["default"], "{}")
    assert reclaimer.reclaim({("default", "a"): 1}) == (False, 0, {("default", "a"): 1})
    assert r.get(f"kiq:wip:{DEAD}|default") == "x" and r.pttl(DEAD) > 0

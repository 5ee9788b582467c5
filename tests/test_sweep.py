"""Unit tests for kiq.sweep: when a master may sweep, and the orphan check."""

from __future__ import annotations

import time

import pytest
from conftest import wait_for

from kiq.connection import connect
from kiq.keys import Keys
from kiq.recovery import Recovery
from kiq.sweep import Sweeper

DEAD = "host-a:100:aaaaaa"


def sweeper(url: str, ttl: float, namespace: str = "") -> Sweeper:
    conn = connect(url)
    keys = Keys(namespace)
    return Sweeper(conn, keys, Recovery(conn, keys), interval=0.0, ttl=ttl)


def orphan(r, prefix: str = "", job: str = "j") -> None:
    """A dead process's in-progress list; registered unless said otherwise."""
    r.lpush(f"{prefix}kiq:wip:{DEAD}|default", job)


def uptime(r) -> int:
    return int(r.info("server")["uptime_in_seconds"])


def test_no_sweep_until_redis_has_been_up_for_a_heartbeat_ttl(redis_server, r):
    """A restarted Redis has lost (or expired) every heartbeat: live workers get a TTL to beat."""
    orphan(r)
    r.sadd("kiq:wip", f"{DEAD}|default")
    ttl = uptime(r) + 2.0
    sweep = sweeper(redis_server.url, ttl)
    sweep.sweep_if_due()
    assert r.llen("queue:default") == 0
    wait_for(lambda: uptime(r) >= ttl, timeout=10)
    sweep.sweep_if_due()
    assert r.lrange("queue:default", 0, -1) == ["j"]


def test_no_sweep_for_a_heartbeat_ttl_after_this_master_lost_redis(redis_server, r):
    sweep = sweeper(redis_server.url, ttl=1.5)
    wait_for(lambda: uptime(r) >= 2, timeout=10)
    sweep.sweep_if_due()  # connects
    # This master alone loses Redis (Redis itself stays up): its login is refused for a moment.
    r.execute_command("ACL", "SETUSER", "default", "off")
    r.client_kill_filter(_type="normal", skipme=True)
    sweep.sweep_if_due()
    r.execute_command("ACL", "SETUSER", "default", "on")
    assert sweep.reachable_since is None
    orphan(r)
    r.sadd("kiq:wip", f"{DEAD}|default")
    sweep.sweep_if_due()
    assert r.llen("queue:default") == 0
    started = time.monotonic()
    wait_for(lambda: (sweep.sweep_if_due(), r.llen("queue:default"))[1], timeout=10)
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("namespace", ["", "app", "a*b"])
def test_the_first_sweep_finds_lists_missing_from_the_registry(redis_server, r, namespace):
    prefix = f"{namespace}:" if namespace else ""
    orphan(r, prefix)
    if namespace:
        orphan(r, "aXb:", "other")  # matches "a*b" as a pattern, but is another namespace's
    wait_for(lambda: uptime(r) >= 1, timeout=10)
    sweeper(redis_server.url, ttl=1.0, namespace=namespace).sweep_if_due()
    assert r.lrange(f"{prefix}queue:default", 0, -1) == ["j"]
    if namespace:
        assert r.lrange(f"aXb:kiq:wip:{DEAD}|default", 0, -1) == ["other"]


def test_the_orphan_check_runs_once_an_hour_across_masters(redis_server, r):
    wait_for(lambda: uptime(r) >= 1, timeout=10)
    first = sweeper(redis_server.url, ttl=1.0)
    first.sweep_if_due()  # its start's check
    orphan(r)
    first.next_orphan_check = 0.0
    second = sweeper(redis_server.url, ttl=1.0)
    second.cursor, second.next_orphan_check = None, 0.0  # past its start's check
    second.sweep_if_due()  # takes the hour's turn
    assert r.lrange("queue:default", 0, -1) == ["j"]
    orphan(r, job="k")
    first.sweep_if_due()  # another master already checked this hour
    assert r.lrange("queue:default", 0, -1) == ["j"]
    assert 3500 < r.ttl("kiq:orphan-check") <= 3600


def test_the_orphan_check_and_the_sweep_work_while_redis_refuses_writes(redis_server, r):
    """At maxmemory a plain SADD or SET is refused: the check registers nothing, it hands what it
    found to the sweep script, which Redis runs once its first write (a move) is made."""
    orphan(r)
    wait_for(lambda: uptime(r) >= 1, timeout=10)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        sweep = sweeper(redis_server.url, ttl=1.0)
        sweep.cursor, sweep.next_orphan_check = None, 0.0  # the hourly check, not the start's
        sweep.sweep_if_due()
        assert r.lrange("queue:default", 0, -1) == ["j"]
        assert sweep.reachable_since is not None
    finally:
        r.config_set("maxmemory", 0)


def test_a_list_found_while_its_owner_still_looks_alive_is_swept_once_it_expires(redis_server, r):
    orphan(r)
    r.set(DEAD, "beating")  # its entry has not expired yet
    wait_for(lambda: uptime(r) >= 1, timeout=10)
    sweep = sweeper(redis_server.url, ttl=1.0)
    sweep.sweep_if_due()  # the start's orphan check finds the list
    assert r.llen("queue:default") == 0
    r.delete(DEAD)  # now it expires
    sweep.sweep_if_due()  # no orphan check this time
    assert r.lrange("queue:default", 0, -1) == ["j"]

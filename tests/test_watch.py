"""Unit tests for kiq.watch: the idle watchers on a real Redis, without a fetcher."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from conftest import wait_for

from kiq.connection import Outage, connect
from kiq.keys import Keys
from kiq.roundtrip import Unit
from kiq.watch import Watchers

IDENT = "host:1:abc"


class Desk:
    """Stands in for the fetcher: records what the watchers hand over, and says whether to wait again."""

    def __init__(self, again: Callable[[Unit | None], bool] = lambda unit: False) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.again = again
        self.caught: list[Unit | None] = []
        self.lost = 0
        self.suspected = 0

    def on_caught(self, unit: Unit | None) -> bool:
        assert self.lock.locked()
        self.caught.append(unit)
        return self.again(unit)

    def on_lost(self) -> None:
        assert self.lock.locked()
        self.lost += 1

    def on_suspected(self) -> None:
        assert self.lock.locked()
        self.suspected += 1


def watchers(redis_server, desk: Desk, queues: list[str]) -> Watchers:
    watch = Watchers(redis_server.url, Keys(), IDENT, queues, desk.ready, desk.on_caught, desk.on_lost,
                     desk.on_suspected, Outage("fetch"))
    assert watch.open(connect(redis_server.url))
    return watch


def start_watching(watch: Watchers, desk: Desk) -> tuple[str, threading.Thread, list[BaseException]]:
    """Claim a queue as a thread in Fetcher.take does, and watch it on a thread of its own."""
    with desk.lock:
        queue = watch.claim()
    assert queue is not None
    errors: list[BaseException] = []

    def run() -> None:
        try:
            watch.watch(queue)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return queue, thread, errors


def blocked(r) -> int:
    return int(r.info("clients")["blocked_clients"])


def end_waits(r) -> None:
    """End the watchers' blocking moves now, as their timeout would."""
    for client in r.client_list():
        if client["name"] == f"kiq-wait-{IDENT}" and "b" in client["flags"]:
            r.client_unblock(client["id"])


@pytest.mark.parametrize("blocking", ["BLMOVE", "BRPOPLPUSH"])
def test_a_watcher_catches_a_job_pushed_to_its_idle_queue_and_hands_it_over(redis_server, r, blocking):
    desk = Desk()
    watch = watchers(redis_server, desk, ["a", "b"])
    assert watch.blocking == "BLMOVE"  # the test's Redis is 6.2 or later
    watch.blocking = blocking
    queue, thread, errors = start_watching(watch, desk)
    assert watch.watching == 1 and watch.free == ["a"]
    wait_for(lambda: blocked(r) == 1)
    r.lpush(f"queue:{queue}", "job")
    thread.join(5)
    assert desk.caught == [Unit(queue, "job")] and not errors
    assert r.lrange(f"kiq:wip:{IDENT}|{queue}", 0, -1) == ["job"]  # in progress the moment it was caught
    assert watch.watching == 0 and sorted(watch.free) == ["a", "b"]


def test_a_watcher_waits_again_while_the_fetcher_says_so(redis_server, r):
    desk = Desk(again=lambda unit: unit is None)
    watch = watchers(redis_server, desk, ["default"])
    _, thread, _ = start_watching(watch, desk)
    for waits in (1, 2):
        wait_for(lambda: blocked(r) == 1)
        end_waits(r)
        wait_for(lambda waits=waits: len(desk.caught) == waits)
    wait_for(lambda: blocked(r) == 1)
    r.lpush("queue:default", "job")
    thread.join(5)
    assert desk.caught == [None, None, Unit("default", "job")]
    assert watch.free == ["default"]


def test_between_waits_a_watcher_says_when_its_queue_has_a_suspect(redis_server, r, monkeypatch):
    """A suspect (kiq.recovery) waits in a list of its own, which no wait catches: the watcher
    looks for one between waits that brought nothing (every LOOK_SECONDS, here each time), and
    says so before that wait's end."""
    monkeypatch.setattr("kiq.watch.LOOK_SECONDS", 0)
    desk = Desk(again=lambda unit: unit is None)
    watch = watchers(redis_server, desk, ["default"])
    start_watching(watch, desk)
    wait_for(lambda: blocked(r) == 1)
    end_waits(r)
    wait_for(lambda: len(desk.caught) == 1)
    assert desk.suspected == 0
    r.rpush("kiq:suspects:default", "pill")
    wait_for(lambda: blocked(r) == 1)
    end_waits(r)
    wait_for(lambda: len(desk.caught) == 2)
    assert desk.suspected == 1 and r.lrange("kiq:suspects:default", 0, -1) == ["pill"]  # only said
    r.delete("kiq:suspects:default")
    wait_for(lambda: blocked(r) == 1)
    r.lpush("queue:default", "job")


def test_a_watcher_leaves_its_queue_when_the_fetcher_wants_no_more_waiting(redis_server, r):
    desk = Desk()
    watch = watchers(redis_server, desk, ["default"])
    _, thread, _ = start_watching(watch, desk)
    wait_for(lambda: blocked(r) == 1)
    end_waits(r)
    thread.join(5)
    assert desk.caught == [None] and watch.free == ["default"]


def test_a_failed_wait_is_reported_before_the_watcher_goes_on(redis_server, r):
    """A blocking move whose connection broke may have moved a job whose reply was lost: the
    fetcher must hear of it (to requeue strays) before the watcher decides to wait again."""
    desk = Desk()
    watch = watchers(redis_server, desk, ["default"])
    _, thread, errors = start_watching(watch, desk)
    wait_for(lambda: blocked(r) == 1)
    for client in r.client_list():
        if client["name"] == f"kiq-wait-{IDENT}":
            r.client_kill_filter(_id=client["id"])
    thread.join(5)
    assert desk.lost == 1 and desk.caught == [None] and not errors
    assert watch.free == ["default"]


def test_a_watcher_whose_thread_dies_gives_its_queue_back_and_wakes_a_thread(redis_server, r):
    """Without that an idle worker would never take a job from that queue again."""

    class ThreadDeath(BaseException):
        pass

    def die(unit: Unit | None) -> bool:
        raise ThreadDeath

    desk = Desk(again=die)
    watch = watchers(redis_server, desk, ["default"])
    woken = threading.Event()

    def wait_for_a_queue() -> None:
        with desk.ready:
            while not watch.free:
                desk.ready.wait()
            woken.set()

    _, thread, errors = start_watching(watch, desk)
    threading.Thread(target=wait_for_a_queue, daemon=True).start()
    wait_for(lambda: blocked(r) == 1)
    r.lpush("queue:default", "job")
    thread.join(5)
    assert [type(error) for error in errors] == [ThreadDeath]
    assert woken.wait(5) and watch.free == ["default"]


def test_a_queue_key_of_another_type_is_no_outage_and_no_lost_reply(redis_server, r):
    """Its move moves nothing, and fails at once: the watcher waits a blocking move's time before
    it tries again, and tells the fetcher of no lost reply (which would resync) nor an outage
    (said and ended again and again)."""
    r.hset("queue:default", "a", "b")
    desk = Desk(again=lambda unit: len(desk.caught) < 3)
    watch = watchers(redis_server, desk, ["default"])
    outage = watch._outage
    _, thread, errors = start_watching(watch, desk)
    thread.join(10)
    assert not thread.is_alive() and not errors
    assert desk.caught == [None, None, None] and desk.lost == 0 and not outage.down

"""kiq.middleware: hooks around every enqueue and every job run, with every adapter and in a real worker."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from conftest import wait_for

import kiq
from kiq import adapters, middleware
from kiq.connection import connect

EVENTS: list[str] = []


class Recording(middleware.Middleware):
    def __init__(self, name: str) -> None:
        self.name = name

    def before_enqueue(self, payload: dict[str, Any]) -> None:
        EVENTS.append(f"{self.name}:before:{payload['args']}")
        payload.setdefault("seen", []).append(self.name)

    def after_enqueue(self, payload: dict[str, Any]) -> None:
        EVENTS.append(f"{self.name}:after:{payload['args']}")

    def around_perform(self, job: kiq.Job, call: Callable[[], Any]) -> Any:
        EVENTS.append(f"{self.name}:enter:{job.payload['seen']}")
        try:
            return call()
        finally:
            EVENTS.append(f"{self.name}:leave")


class MwJob(kiq.Job):
    def perform(self, value: int) -> int:
        EVENTS.append(f"perform:{value}")
        return value


class Forgetful(middleware.Middleware):
    def around_perform(self, job: kiq.Job, call: Callable[[], Any]) -> Any:
        return None


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    saved = middleware.installed()
    middleware.clear()
    EVENTS.clear()
    yield
    middleware.clear()
    for each in saved:
        middleware.add(each)
    adapters.use("redis")


def test_hooks_run_in_order_around_enqueue_and_perform():
    adapters.use("inline")
    middleware.add(Recording("outer"))
    middleware.add(Recording("inner"))
    MwJob.perform_later(1)
    assert EVENTS == ["outer:before:[1]", "inner:before:[1]",
                      "outer:enter:['outer', 'inner']", "inner:enter:['outer', 'inner']", "perform:1",
                      "inner:leave", "outer:leave",
                      "inner:after:[1]", "outer:after:[1]"]


def test_a_bulk_enqueue_calls_the_enqueue_hooks_per_job_with_the_test_adapter():
    test = adapters.use("test")
    middleware.add(Recording("m"))
    MwJob.perform_bulk([[1], [2]])
    assert EVENTS == ["m:before:[1]", "m:before:[2]", "m:after:[1]", "m:after:[2]"]
    assert [payload["seen"] for payload in test.enqueued] == [["m"], ["m"]]


def test_the_redis_client_pushes_what_the_hooks_made(client, r):
    middleware.add(Recording("m"))
    MwJob.perform_later(3)
    MwJob.perform_bulk([[4], [5]])
    MwJob.set(wait=60).perform_later(6)
    queued = [json.loads(raw) for raw in r.lrange("queue:default", 0, -1)]
    scheduled = [json.loads(raw) for raw in r.zrange("schedule", 0, -1)]
    assert sorted(job["args"][0] for job in queued) == [3, 4, 5]
    assert all(job["seen"] == ["m"] for job in queued + scheduled) and len(scheduled) == 1


def test_an_error_in_before_enqueue_fails_the_enqueue_and_pushes_nothing(client, r):
    class Refusing(middleware.Middleware):
        def before_enqueue(self, payload: dict[str, Any]) -> None:
            if payload["args"] == [2]:
                raise PermissionError("not this one")

    middleware.add(Refusing())
    with pytest.raises(PermissionError):
        MwJob.perform_bulk([[1], [2]])
    assert r.llen("queue:default") == 0


def test_an_around_hook_that_does_not_call_fails_the_job():
    adapters.use("inline")
    middleware.add(Forgetful())
    with pytest.raises(RuntimeError, match=r"Forgetful\.around_perform did not call call"):
        MwJob.perform_later(1)
    assert "perform:1" not in EVENTS


def test_only_middleware_instances_are_added_and_each_once():
    with pytest.raises(TypeError):
        middleware.add(lambda payload: None)  # type: ignore[arg-type]
    one = Recording("one")
    middleware.add(one)
    with pytest.raises(ValueError, match="already added"):
        middleware.add(one)
    middleware.remove(one)
    assert middleware.installed() == []


@pytest.mark.slow
def test_a_tenant_travels_from_the_enqueuing_process_to_a_real_worker(start_kiq, client, r):
    import middleware_sample

    if middleware_sample.TENANT not in middleware.installed():  # imported earlier: cleared since
        middleware.add(middleware_sample.TENANT)
    kiq_process = start_kiq(require=["middleware_sample"])
    [worker] = kiq_process.wait_workers(1)
    for name in ("acme", "globex"):
        token = middleware_sample.tenant.set(name)
        middleware_sample.TenantJob.perform_later(f"job-{name}")
        middleware_sample.tenant.reset(token)
    wait_for(lambda: r.llen("tenants") == 2)
    assert sorted(r.lrange("tenants", 0, -1)) == [f"job-acme:acme:{worker}", f"job-globex:globex:{worker}"]
    # kiq's own members come first, though the app added its own before the worker started
    assert r.lrange("chain", 0, -1) == ["JobLog JobMetrics"] * 2
    wait_for(lambda: kiq_process.log().count('"event": "done"') == 2)  # written after the job's push
    lines = [json.loads(line) for line in kiq_process.log().splitlines() if line.startswith("{")]
    set_lines = {line["tenant"]: line for line in lines if line["event"] == "tenant set"}
    done = {line["jid"]: line for line in lines if line["event"] == "done"}
    assert set(set_lines) == {"acme", "globex"} and {line["jid"] for line in set_lines.values()} == set(done)
    assert all(line["class"] == "TenantJob" and line["queue"] == "default" for line in set_lines.values())


class Pushing(middleware.Middleware):
    def __init__(self, name: str) -> None:
        self.name = name

    def around_push(self, payloads: Any, call: Callable[[], None]) -> None:
        EVENTS.append(f"{self.name}:push:{[p['args'] for p in payloads]}:{[p.get('seen') for p in payloads]}")
        try:
            call()
        except Exception as error:
            EVENTS.append(f"{self.name}:failed:{type(error).__name__}")
            raise
        EVENTS.append(f"{self.name}:pushed")


def test_around_push_hooks_nest_around_each_push_after_the_before_hooks(client, r):
    middleware.add(Pushing("outer"))
    middleware.add(Recording("m"))
    middleware.add(Pushing("inner"))
    MwJob.perform_bulk([[1], [2], [3]], batch_size=2)
    assert EVENTS == [
        "m:before:[1]", "m:before:[2]",
        "outer:push:[[1], [2]]:[['m'], ['m']]", "inner:push:[[1], [2]]:[['m'], ['m']]", "inner:pushed",
        "outer:pushed", "m:after:[1]", "m:after:[2]",
        "m:before:[3]", "outer:push:[[3]]:[['m']]", "inner:push:[[3]]:[['m']]", "inner:pushed",
        "outer:pushed", "m:after:[3]",
    ]
    assert r.llen("queue:default") == 3


def test_around_push_sees_a_failed_push_whose_error_reaches_the_caller(redis_server, client):
    middleware.add(Pushing("m"))
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        kiq.Client(redis_server.url, connection=connect(redis_server.url)).enqueue(MwJob, [1])
    assert EVENTS == ["m:push:[[1]]:[None]", "m:failed:ConnectionError"]


def test_an_around_push_that_does_not_call_fails_the_enqueue_and_pushes_nothing(client, r):
    class Swallowing(middleware.Middleware):
        def around_push(self, payloads: Any, call: Callable[[], None]) -> None:
            pass

    middleware.add(Swallowing())
    with pytest.raises(RuntimeError, match=r"Swallowing\.around_push did not call call"):
        MwJob.perform_later(1)
    assert r.llen("queue:default") == 0


def test_kiqs_own_enqueue_hooks_run_ahead_of_the_apps(client):
    own = Pushing("kiq")
    middleware.add(Pushing("app"))
    middleware.add_builtin(own)
    try:
        MwJob.perform_later(1)
    finally:
        middleware.remove(own)
    assert EVENTS[:2] == ["kiq:push:[[1]]:[None]", "app:push:[[1]]:[None]"]
    assert own not in middleware.installed()

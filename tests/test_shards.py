"""Shards (kiq.shards): queues on two independent Redis servers, each in Sidekiq's own layout.

The config names the shards and the queues on each; the client routes each job by its queue;
each worker serves one shard; each shard has its own schedule, retries, dead jobs, stats and
recovery. Every test here runs two real redis-servers, and the process-level ones real
``kiq start`` masters.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from conftest import RedisServer, wait_for

from kiq.client import Client
from kiq.config import ConfigError, load
from kiq.shards import SINGLE, Shard, Shards


def shards_of(main: RedisServer, billing: RedisServer) -> dict[str, Any]:
    return {"main": main.url, "billing": {"url": billing.url, "queues": ["billing", "invoices"]}}


# -- config and routing ---------------------------------------------------------------------


def test_config_names_shards_and_routes_queues_not_named_to_the_first(tmp_path):
    path = tmp_path / "kiq.yml"
    path.write_text("shards:\n  main: redis://127.0.0.1:1/0\n"
                    "  billing:\n    url: redis://127.0.0.1:2/0\n    queues: [invoices, payments]\n"
                    "queues: [critical, invoices, default]\n")
    config = load(str(path))
    routes = config.routes
    assert routes.names == ["main", "billing"] and routes.sharded
    assert routes.route("invoices").name == "billing" and routes.route("payments").name == "billing"
    assert routes.route("critical").name == "main" and routes.route("never-named").name == "main"
    assert config.redis_url == "redis://127.0.0.1:1/0"  # the default shard's
    assert config.served_shards() == ["main", "billing"]
    assert config.on_shard("billing").queues == [("invoices", 1)]
    assert config.on_shard("billing").redis_url == "redis://127.0.0.1:2/0"
    assert config.on_shard("main").queue_names == ["critical", "default"]


def test_redis_url_alone_is_the_one_shard_case(tmp_path):
    config = load(None, {"redis_url": "redis://127.0.0.1:7/0"})
    assert config.routes == Shards([Shard(SINGLE, "redis://127.0.0.1:7/0")])
    assert not config.routes.sharded and config.served_shards() == [SINGLE]


@pytest.mark.parametrize("shards, key", [
    ({}, "shards"),
    ({"main": "not a url"}, "shards.main.url"),
    ({"main": "redis://a:1", "b": {"url": "redis://b:1", "queues": "x", "weight": 1}}, "shards.b.weight"),
    ({"main": {"url": "redis://a:1", "queues": ["x"]}, "b": {"url": "redis://b:1", "queues": ["x"]}},
     "shards.b.queues"),
    ({"bad name": "redis://a:1"}, "shards"),
    ({"main": 5}, "shards.main"),
])
def test_bad_shards_are_config_errors_naming_the_key(shards, key):
    with pytest.raises(ConfigError) as error:
        load(None, {"shards": shards})
    assert error.value.key == key


def test_redis_url_and_shards_together_are_refused():
    with pytest.raises(ConfigError) as error:
        load(None, {"redis_url": "redis://127.0.0.1:1/0", "shards": {"main": "redis://127.0.0.1:2/0"}})
    assert error.value.key == "redis_url"


def test_the_client_routes_each_job_by_its_queue(redis_server, second_redis):
    client = Client(shards=shards_of(redis_server, second_redis), namespace="")
    main, billing = redis_server.client(), second_redis.client()
    client.enqueue("InvoiceJob", [1], queue="invoices")
    client.enqueue("MailJob", [2], queue="mail")
    client.enqueue("InvoiceJob", [3], queue="invoices", at=time.time() + 60)
    client.enqueue("MailJob", [4], queue="mail", at=time.time() + 60)
    assert billing.llen("queue:invoices") == 1 and main.llen("queue:invoices") == 0
    assert main.llen("queue:mail") == 1 and billing.llen("queue:mail") == 0
    assert billing.smembers("queues") == {"invoices"} and main.smembers("queues") == {"mail"}
    assert [json.loads(raw)["args"] for raw in billing.zrange("schedule", 0, -1)] == [[3]]
    assert [json.loads(raw)["args"] for raw in main.zrange("schedule", 0, -1)] == [[4]]


def test_bulk_enqueue_and_push_bulk_group_per_shard(redis_server, second_redis):
    client = Client(shards=shards_of(redis_server, second_redis), namespace="")
    main, billing = redis_server.client(), second_redis.client()
    client.enqueue_bulk("InvoiceJob", [[n] for n in range(5)], queue="invoices")
    client.enqueue_bulk("MailJob", [[n] for n in range(3)], queue="mail", at=time.time() + 60)
    client.push_bulk([{"class": "A", "args": [], "jid": "a" * 24, "queue": "billing", "retry": True},
                      {"class": "B", "args": [], "jid": "b" * 24, "queue": "default", "retry": True}])
    assert billing.llen("queue:invoices") == 5 and billing.llen("queue:billing") == 1
    assert main.zcard("schedule") == 3 and billing.zcard("schedule") == 0
    assert main.llen("queue:default") == 1 and main.llen("queue:invoices") == 0


# -- kiq start on two shards ----------------------------------------------------------------


def sharded(start_kiq, main: RedisServer, billing: RedisServer, **settings: Any):
    return start_kiq(redis_url=None, shards=shards_of(main, billing),
                     queues=["default", "billing", "invoices"], **settings)


def stat(conn: redis.Redis, name: str) -> int:
    return int(conn.get(f"stat:{name}") or 0)


def test_workers_serve_one_shard_each_and_jobs_run_on_their_shard(start_kiq, redis_server, second_redis, r):
    kiq = sharded(start_kiq, redis_server, second_redis, processes=1)
    kiq.wait_workers(2)  # one per shard
    billing = second_redis.client()
    wait_for(lambda: r.scard("processes") == 1 and billing.scard("processes") == 1)
    [main_worker] = r.smembers("processes")
    [billing_worker] = billing.smembers("processes")
    assert json.loads(r.hget(main_worker, "info"))["queues"] == ["default"]
    assert json.loads(billing.hget(billing_worker, "info"))["queues"] == ["billing", "invoices"]
    client = Client(shards=shards_of(redis_server, second_redis), namespace="")
    client.enqueue_bulk("RecordJob", [[f"m{n}"] for n in range(5)], queue="default")
    client.enqueue_bulk("RecordJob", [[f"b{n}"] for n in range(7)], queue="invoices")
    client.enqueue("RecordJob", ["b-late"], queue="billing", at=time.time() + 0.5)
    wait_for(lambda: r.llen("results") == 13, timeout=20)
    assert stat(r, "processed") == 5 and stat(billing, "processed") == 8
    assert billing.zcard("schedule") == 0


def test_a_retry_and_a_failure_stay_on_the_second_shard(start_kiq, redis_server, second_redis, r):
    kiq = sharded(start_kiq, redis_server, second_redis)
    kiq.wait_workers(2)
    billing = second_redis.client()
    client = Client(shards=shards_of(redis_server, second_redis), namespace="")
    client.enqueue("FailJob", ["f1"], queue="invoices")
    wait_for(lambda: billing.zcard("retry") == 1, timeout=20)
    assert r.zcard("retry") == 0 and stat(billing, "failed") == 1
    due = {"class": "RecordJob", "args": ["retried"], "jid": "c" * 24, "queue": "invoices", "retry": 3,
           "retry_count": 0, "error_class": "ValueError", "error_message": "once", "failed_at": time.time()}
    billing.zadd("retry", {json.dumps(due): time.time() - 1})
    wait_for(lambda: "retried" in r.lrange("results", 0, -1), timeout=20)
    assert stat(billing, "processed") == 2 and stat(r, "processed") == 0


def test_a_sigkilled_workers_jobs_on_the_second_shard_are_recovered_there(start_kiq, redis_server,
                                                                           second_redis, r):
    kiq = sharded(start_kiq, redis_server, second_redis)
    kiq.wait_workers(2)
    billing = second_redis.client()
    client = Client(shards=shards_of(redis_server, second_redis), namespace="")
    client.enqueue("KillerJob", [], queue="billing")  # kills its worker each time it runs
    wait_for(lambda: billing.zcard("dead") == 1, timeout=40)  # requeued twice, then a poison pill
    assert r.llen("attempts") == 3
    [dead] = billing.zrange("dead", 0, -1)
    assert json.loads(dead)["error_class"] == "kiq.PoisonPill"
    assert "requeued jobs of dead worker" in kiq.log() and r.zcard("dead") == 0
    kiq.wait_workers(2)


def test_ttin_and_ttou_add_and_remove_a_worker_per_shard(start_kiq, redis_server, second_redis):
    import signal

    kiq = sharded(start_kiq, redis_server, second_redis)
    kiq.wait_workers(2)
    kiq.signal(signal.SIGTTIN)
    kiq.wait_workers(4)
    billing = second_redis.client()
    wait_for(lambda: billing.scard("processes") == 2)
    kiq.signal(signal.SIGTTOU)
    kiq.wait_workers(2, timeout=20)

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
from conftest import RedisServer, free_port, wait_for

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
    # the stats count a job at its acknowledgement, just after it recorded its run
    wait_for(lambda: stat(r, "processed") == 5 and stat(billing, "processed") == 8)
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
    wait_for(lambda: stat(billing, "processed") == 2)
    assert stat(r, "processed") == 0


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

    from conftest import title

    kiq = sharded(start_kiq, redis_server, second_redis)
    kiq.wait_workers(2)
    assert title(kiq.pid).startswith("kiq master [gen 1] 2 workers")  # one per shard
    kiq.signal(signal.SIGTTIN)
    kiq.wait_workers(4)
    wait_for(lambda: title(kiq.pid).startswith("kiq master [gen 1] 4 workers"))
    billing = second_redis.client()
    wait_for(lambda: billing.scard("processes") == 2)
    kiq.signal(signal.SIGTTOU)
    kiq.wait_workers(2, timeout=20)


# -- the API and the operator's commands ----------------------------------------------------


def write_config(path, main: RedisServer, billing: RedisServer, billing_queues: list[str]) -> str:
    import yaml

    config = {"shards": {"main": main.url, "billing": {"url": billing.url, "queues": billing_queues}},
              "require": ["sample_jobs"], "queues": ["default", "billing", "invoices"], "processes": 1,
              "concurrency": 4, "timeout": 5, "log": {"format": "json", "level": "info"},
              "metrics": {"port": 0}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def cli(config: str, *args: str) -> str:
    import subprocess
    import sys

    from conftest import ROOT, sample_env

    done = subprocess.run([sys.executable, "-m", "kiq", *args, "-c", config], cwd=ROOT, env=sample_env(""),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_api_and_commands_show_both_shards(start_kiq, redis_server, second_redis, r, tmp_path):
    from kiq.api import ShardedAPI, total

    kiq = sharded(start_kiq, redis_server, second_redis)
    kiq.wait_workers(2)
    billing = second_redis.client()
    client = Client(shards=shards_of(redis_server, second_redis), namespace="")
    failed = client.enqueue("FailJob", ["f"], queue="invoices")
    wait_for(lambda: billing.zcard("retry") == 1, timeout=20)
    client.enqueue("RecordJob", ["later-main"], queue="default", at=time.time() + 3600)
    client.enqueue("RecordJob", ["later-billing"], queue="billing", at=time.time() + 3600)
    client.enqueue("RecordJob", ["parked"], queue="parked")  # no worker: stays on main
    api = ShardedAPI(shards_of(redis_server, second_redis), namespace="")
    wait_for(lambda: len(api.processes()) == 2)
    assert sorted((p.shard, tuple(p.queues)) for p in api.processes()) == [
        ("billing", ("billing", "invoices")), ("main", ("default",))]
    stats = api.stats()
    assert (stats["main"].scheduled, stats["billing"].scheduled, stats["billing"].retries) == (1, 1, 1)
    assert total(stats).scheduled == 2 and total(stats).processes == 2
    assert [(q.shard, q.name, q.size) for q in api.queue_summaries() if q.size] == [("main", "parked", 1)]
    # found in billing's retry set (and as running there, until its worker's next beat)
    wait_for(lambda: [(f.shard, f.place) for f in api.find(failed.jid)] == [("billing", "retry")])

    config = write_config(tmp_path / "cli.yml", redis_server, second_redis, ["billing", "invoices"])
    data = json.loads(cli(config, "stats", "--json"))
    assert data["scheduled"] == 2 and data["shards"]["billing"]["retries"] == 1
    assert data["shards"]["main"]["retries"] == 0
    table = cli(config, "stats")
    assert table.splitlines()[0].split() == ["stat", "main", "billing", "total"]
    assert {(q["shard"], q["queue"]) for q in json.loads(cli(config, "queues", "--json"))} >= {
        ("main", "parked")}
    assert sorted(p["shard"] for p in json.loads(cli(config, "processes", "--json"))) == ["billing", "main"]
    assert [(j["shard"], j["jid"]) for j in json.loads(cli(config, "retries", "list", "--json"))] == [
        ("billing", failed.jid)]
    assert sorted(j["shard"] for j in json.loads(cli(config, "scheduled", "list", "--json"))) == [
        "billing", "main"]
    assert {f["shard"] for f in json.loads(cli(config, "find", failed.jid, "--json"))} == {"billing"}
    assert "retry: 1 job(s)" in cli(config, "retries", "retry", failed.jid)  # found on billing, runs there
    wait_for(lambda: r.llen("attempts") == 2 and billing.zcard("retry") + billing.zcard("dead") == 1,
             timeout=20)
    assert r.zcard("retry") + r.zcard("dead") == 0  # its failure went back to its own shard


def test_metrics_label_every_shard(redis_server, second_redis):
    from kiq.connection import connect
    from kiq.exporter import RedisCollector
    from kiq.keys import Keys

    client = Client(shards=shards_of(redis_server, second_redis), namespace="")
    client.enqueue("RecordJob", ["x"], queue="invoices")
    client.enqueue("RecordJob", ["y"], queue="mail", at=time.time() + 60)
    conns = {"main": (connect(redis_server.url), Keys("")), "billing": (connect(second_redis.url), Keys(""))}
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in RedisCollector(conns).collect() for s in family.samples}
    assert found[("kiq_queue_size", (("queue", "invoices"), ("shard", "billing")))] == 1
    assert ("kiq_queue_size", (("queue", "invoices"), ("shard", "main"))) not in found
    assert found[("kiq_scheduled_jobs", (("shard", "main"),))] == 1
    assert found[("kiq_scheduled_jobs", (("shard", "billing"),))] == 0


# -- moving a queue to another shard (docs/operations.md) -----------------------------------



def test_a_shard_redis_cannot_be_read_leaves_only_its_figures_out_of_a_scrape(redis_server):
    from kiq.connection import connect
    from kiq.exporter import RedisCollector
    from kiq.keys import Keys

    Client(redis_server.url, namespace="").enqueue("RecordJob", ["x"], queue="mail")
    gone = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    conns = {"main": (connect(redis_server.url), Keys("")), "billing": (gone, Keys(""))}
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in RedisCollector(conns).collect() for s in family.samples}
    assert found[("kiq_redis_up", (("shard", "main"),))] == 1
    assert found[("kiq_redis_up", (("shard", "billing"),))] == 0
    assert found[("kiq_queue_size", (("queue", "mail"), ("shard", "main")))] == 1
    assert not [key for key in found if ("shard", "billing") in key[1] and key[0] != "kiq_redis_up"]


def test_a_key_of_another_type_leaves_out_its_figure_not_the_shard(redis_server, r):
    from kiq.connection import connect
    from kiq.exporter import RedisCollector
    from kiq.keys import Keys

    Client(redis_server.url, namespace="").enqueue("RecordJob", ["x"], queue="ok")
    r.sadd("queues", "mail")
    r.hset("queue:mail", "a", "b")
    r.set("retry", "x")
    r.sadd("processes", "p:1:a")
    r.set("p:1:a", "x")
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in RedisCollector({"main": (connect(redis_server.url), Keys(""))}).collect()
             for s in family.samples}
    assert found[("kiq_redis_up", (("shard", "main"),))] == 1
    assert found[("kiq_queue_size", (("queue", "ok"), ("shard", "main")))] == 1
    assert ("kiq_queue_size", (("queue", "mail"), ("shard", "main"))) not in found
    assert ("kiq_retry_jobs", (("shard", "main"),)) not in found
    assert found[("kiq_dead_jobs", (("shard", "main"),))] == 0


def test_moving_a_queue_to_another_shard_loses_nothing(start_kiq, redis_server, second_redis, r, tmp_path):
    """The documented procedure: put the queue on its new shard in the config, reload (HUP),
    then ``kiq shards move QUEUE --to SHARD`` until it moves nothing. Producers that still
    route by the old config meanwhile push to the old shard, and the move catches them."""
    import signal

    billing = second_redis.client()
    before = {"main": redis_server.url, "billing": {"url": second_redis.url, "queues": ["billing"]}}
    kiq = start_kiq(redis_url=None, shards=before, queues=["default", "billing", "invoices"])
    kiq.wait_workers(2)
    old = Client(shards=before, namespace="")
    old.enqueue_bulk("RecordJob", [[f"before-{n}"] for n in range(5)], queue="invoices")
    wait_for(lambda: r.llen("results") == 5 and stat(r, "processed") == 5)
    assert stat(billing, "processed") == 0

    # 1. the config puts invoices on billing; 2. reload: the new generation serves it there
    config = write_config(tmp_path / "kiq-0.yml", redis_server, second_redis, ["billing", "invoices"])
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: "generation exited" in kiq.log() and len(kiq.workers()) == 2, timeout=30)
    [main_worker] = wait_for(lambda: (found := r.smembers("processes")) and len(found) == 1 and found)
    assert json.loads(r.hget(main_worker, "info"))["queues"] == ["default"]

    # producers still on the old config keep filling the old shard: waiting, scheduled, retries, dead
    old.enqueue_bulk("RecordJob", [[f"late-{n}"] for n in range(20)], queue="invoices")
    old.enqueue("RecordJob", ["scheduled-soon"], queue="invoices", at=time.time() + 1)
    old.enqueue("RecordJob", ["scheduled-later"], queue="invoices", at=time.time() + 3600)
    retrying = {"class": "RecordJob", "args": ["retrying"], "jid": "d" * 24, "queue": "invoices",
                "retry": True, "retry_count": 0, "error_class": "E", "error_message": "m", "failed_at": 1.0}
    died = {**retrying, "args": ["died"], "jid": "e" * 24}
    r.zadd("retry", {json.dumps(retrying): time.time() + 3600})
    r.zadd("dead", {json.dumps(died): time.time()})
    r.zadd("retry", {json.dumps({**retrying, "queue": "default", "jid": "f" * 24}): time.time() + 3600})
    suspect = {**retrying, "args": ["suspected"], "jid": "a" * 24}
    r.rpush("kiq:suspects:invoices", json.dumps(suspect))  # to run alone (kiq.recovery)
    assert r.llen("queue:invoices") == 20  # nobody serves invoices on main any more
    listed = json.loads(cli(config, "shards", "list", "--json"))
    main_queues = {q["queue"]: q for q in listed[0]["queues"]}
    assert main_queues["invoices"]["state"] == "misplaced: lives on billing"

    # 3. move, until nothing is left
    moved = json.loads(cli(config, "shards", "move", "invoices", "--to", "billing", "--json"))
    assert moved[0]["from"] == "main" and moved[0]["doubled"] == 0
    assert moved[0]["moved"]["retry"] == 1 and moved[0]["moved"]["dead"] == 1
    assert moved[0]["moved"]["suspects"] == 1
    wait_for(lambda: r.zcard("schedule") == 0 and billing.zcard("schedule") <= 1)  # the soon one is due
    again = json.loads(cli(config, "shards", "move", "invoices", "--to", "billing", "--json"))
    assert again[0]["doubled"] == 0
    tokens = {f"late-{n}" for n in range(20)} | {f"before-{n}" for n in range(5)}
    tokens |= {"scheduled-soon", "suspected"}
    wait_for(lambda: set(r.lrange("results", 0, -1)) == tokens, timeout=20)
    assert len(r.lrange("results", 0, -1)) == len(tokens)  # each ran once
    wait_for(lambda: stat(billing, "processed") == 22)
    assert r.llen("queue:invoices") == 0 and not r.exists("kiq:suspects:invoices")
    assert [json.loads(raw)["args"] for raw in billing.zrange("schedule", 0, -1)] == [["scheduled-later"]]
    assert [json.loads(raw)["jid"] for raw in billing.zrange("retry", 0, -1)] == ["d" * 24]
    assert [json.loads(raw)["jid"] for raw in billing.zrange("dead", 0, -1)] == ["e" * 24]
    assert [json.loads(raw)["jid"] for raw in r.zrange("retry", 0, -1)] == ["f" * 24]  # another queue's
    assert r.zcard("dead") == 0
    nothing = json.loads(cli(config, "shards", "move", "invoices", "--to", "billing", "--json"))
    assert sum(nothing[0]["moved"].values()) == 0
    assert "invoices" not in r.smembers("queues")  # emptied there: no longer listed as misplaced
    listed = json.loads(cli(config, "shards", "list", "--json"))
    assert "invoices" not in {q["queue"] for q in listed[0]["queues"]}


def test_a_move_refuses_a_shard_the_config_does_not_name(redis_server, second_redis, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, sample_env

    config = write_config(tmp_path / "cli.yml", redis_server, second_redis, ["billing"])
    done = subprocess.run([sys.executable, "-m", "kiq", "shards", "move", "invoices", "--to", "billing",
                           "-c", config], cwd=ROOT, env=sample_env(""), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "puts queue 'invoices' on shard 'main'" in done.stderr


def test_a_move_to_a_shard_whose_queues_key_is_of_another_type_moves_each_job_once(redis_server,
                                                                                   second_redis):
    """Its listing in queues fails; the jobs still move, and a second move copies none again."""
    from kiq.api import API
    from kiq.move import move_queue

    main, billing = redis_server.client(), second_redis.client()
    main.sadd("queues", "invoices")
    main.lpush("queue:invoices", "job-a", "job-b")
    billing.set("queues", "x")
    source, target = API(redis_server.url, "", shard="main"), API(second_redis.url, "", shard="billing")
    assert move_queue(source, target, "invoices").moved["queue"] == 2
    assert move_queue(source, target, "invoices").moved["queue"] == 0
    assert main.llen("queue:invoices") == 0 and billing.lrange("queue:invoices", 0, -1) == ["job-b", "job-a"]
    assert main.smembers("queues") == set()  # emptied: no longer listed on main


def test_a_job_taken_on_the_source_during_a_move_is_withdrawn_from_the_target(redis_server, second_redis):
    """The move's race, played by hand: a job that leaves the source between its copy and its
    removal is taken back from the target, so it is on exactly one shard."""
    from kiq.api import API
    from kiq.move import Moved, _withdraw

    target = API(second_redis.url, "", shard="billing")
    billing = second_redis.client()
    billing.lpush("queue:invoices", "job-a", "job-b")
    moved = Moved("invoices", "main", "billing")
    _withdraw(target, ["job-a"], lambda pipe, raw: pipe.lrem("queue:invoices", 1, raw), moved)
    assert billing.lrange("queue:invoices", 0, -1) == ["job-b"] and (moved.taken, moved.doubled) == (1, 0)
    _withdraw(target, ["job-a"], lambda pipe, raw: pipe.lrem("queue:invoices", 1, raw), moved)
    assert (moved.taken, moved.doubled) == (2, 1)  # already gone from the target too: on both


def test_a_periodic_entry_fires_on_the_shard_of_its_queue(start_kiq, redis_server, second_redis, r):
    entry = {"name": "invoicing", "cron": "* * * * * *", "class": "TickJob", "queue": "invoices"}
    kiq = sharded(start_kiq, redis_server, second_redis, periodic=[entry])
    kiq.wait_workers(2)
    billing = second_redis.client()
    wait_for(lambda: r.llen("ticks") >= 2, timeout=20)
    assert billing.exists("kiq:periodic:invoicing") and not r.exists("kiq:periodic:invoicing")
    wait_for(lambda: stat(billing, "processed") >= 1)
    assert stat(r, "processed") == 0

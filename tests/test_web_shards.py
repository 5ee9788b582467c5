"""The dashboard over two shards (kiq.shards), each a real redis-server: every page shows every
shard, with the shard as a column where it matters, and every action changes the shard it names.
One Redis shows no shard anywhere (tests/test_web.py is the one-Redis dashboard)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from conftest import ROOT, RedisServer, free_port, sample_env, wait_for
from test_web import cells, done, key, page, post
from webdata import (
    SCRIPT,
    accepts,
    add,
    commands_during,
    csrf,
    dump,
    executions,
    failure,
    fill,
    heartbeat,
    jid,
    job,
    push,
)
from werkzeug.test import Client

import kiq.web
from kiq.periodic import Entry
from kiq.shards import Shards

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BILLING_PROCESS = "bill-1:201:0c0c"


def shards_of(main: RedisServer, billing: RedisServer) -> dict[str, Any]:
    return {"main": main.url, "billing": {"url": billing.url, "queues": ["invoices"]}}


@pytest.fixture
def billing(second_redis: RedisServer) -> redis.Redis:
    return second_redis.client()


@pytest.fixture
def web(redis_server: RedisServer, second_redis: RedisServer) -> Client:
    return Client(kiq.web.app(shards=shards_of(redis_server, second_redis)))


def fill_billing(billing: redis.Redis) -> None:
    """The second shard: its own queue, sets, process and counters."""
    now = time.time()
    push(billing, "invoices", job(60, "invoices"), job(61, "invoices", args=[SCRIPT]))
    add(billing, "schedule", (job(70, "invoices"), now + 900))
    add(billing, "retry", (failure(80, "invoices", error_message=SCRIPT), now + 60))
    add(billing, "dead", (failure(90, "invoices"), now - 10))
    heartbeat(billing, BILLING_PROCESS, busy=1, tag="billing",
              running={"tid-9": job(95, "invoices", job_class="InvoiceJob")})
    billing.set("stat:processed", 1000)
    billing.set("stat:failed", 4)
    billing.set(f"stat:processed:{time.strftime('%Y-%m-%d', time.gmtime())}", 77)


@pytest.fixture
def both(r: redis.Redis, billing: redis.Redis) -> None:
    fill(r)
    fill_billing(billing)


# -- what each page shows -----------------------------------------------------------------


def test_the_dashboard_adds_the_shards_up_and_shows_each_one(web, both):
    html = page(web, "/")
    assert 'data-stat="processed">2,234<' in html and 'data-stat="failed">60<' in html
    assert 'data-stat="processes">2<' in html and 'data-stat="retries">3<' in html
    assert cells(html, "shards") == [
        ["main", "0", "0", "1", "1", "5", "2", "2", "2"],
        ["billing", "77", "0", "1", "1", "2", "1", "1", "1"]]
    assert 'href="/retries?shard=billing">1</a>' in html
    version, memory, *_ = cells(html, "redis")
    assert version[0] == "version" and len(version) == 3 and all(each[0].isdigit() for each in version[1:])
    assert memory[0] == "memory used" and all(each.endswith(("K", "M")) for each in memory[1:])
    assert '<th class="shard">main</th><th class="shard">billing</th>' in html
    assert 'href="/queues/invoices?shard=billing">invoices</a></td><td class="shard">billing</td>' in html


def test_stats_json_totals_every_shard_and_gives_each_one(web, both):
    data = json.loads(page(web, "/stats.json"))
    assert (data["processed"], data["failed"], data["enqueued"], data["dead"]) == (2234, 60, 7, 3)
    assert data["shards"]["billing"]["retries"] == 1 and data["shards"]["main"]["retries"] == 2


def test_the_hours_and_days_add_up_every_shard_s_records(web, r, billing):
    executions(r, "AJob", 5, [10.0] * 3)
    executions(billing, "AJob", 5, [10.0] * 4, failed=1)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    r.set(f"stat:processed:{today}", 10)
    billing.set(f"stat:processed:{today}", 5)
    html = page(web, "/")
    assert "8 processed and 1 failed in these 24 hours" in html
    assert f"{today}: 15 processed, 0 failed" in html


def test_busy_lists_every_shard_s_processes_with_their_shard(web, both):
    html = page(web, "/busy")
    rows = cells(html, "processes")
    assert [(row[0], row[1].split()[-1]) for row in rows] == [("main", "web-1:101:0a0a"),
                                                              ("billing", BILLING_PROCESS)]
    assert "2 of 20 threads busy in 2 process(es) on 2 shards" in html
    running = cells(html, "running")
    assert [(row[0], row[7]) for row in running] == [("main", jid(50)), ("billing", jid(95))]
    assert 'href="/queues/invoices?shard=billing">invoices</a>' in html
    filtered = cells(page(web, "/busy?q=billing"), "processes")
    assert [row[1].split()[-1] for row in filtered] == [BILLING_PROCESS]


def test_busy_quiets_a_process_on_its_own_shard_and_stops_every_shard_s(web, r, billing, both):
    done(post(web, "/busy", {"action": "quiet", "identity": BILLING_PROCESS, "shard": "billing"}),
         "/busy?done=quiet&count=1")
    assert billing.lrange(f"{BILLING_PROCESS}-signals", 0, -1) == ["TSTP"]
    assert not r.exists(f"{BILLING_PROCESS}-signals")
    done(post(web, "/busy", {"action": "quiet", "identity": BILLING_PROCESS}), "/busy?done=quiet&count=0")
    done(post(web, "/busy", {"action": "stop", "all": "1"}), "/busy?done=stop&count=2")
    assert r.lrange("web-1:101:0a0a-signals", 0, -1) == ["TERM"]
    assert billing.lrange(f"{BILLING_PROCESS}-signals", 0, -1) == ["TERM", "TSTP"]
    unknown = post(web, "/busy", {"action": "stop", "identity": BILLING_PROCESS, "shard": "nowhere"})
    assert unknown.status_code == 404


def test_queues_lists_every_shard_s_queues_and_a_queue_s_page_reads_its_shard(web, r, billing, both):
    push(billing, "default", job(66))  # a queue found on the shard the config does not put it on
    rows = cells(page(web, "/queues"), "queues")
    assert [row[:3] for row in rows] == [["critical", "main", "1"], ["default", "main", "4"],
                                         ["default", "billing", "1"], ["invoices", "billing", "2"]]
    invoices = page(web, "/queues/invoices")  # without ?shard=: the shard the queue lives on
    assert jid(60) in invoices and "on shard <strong>billing</strong>" in invoices
    assert 'action="/queues/invoices?shard=billing"' in invoices  # clear keeps the shard
    moved = page(web, "/queues/default?shard=billing")
    assert jid(66) in moved and jid(0) not in moved
    assert jid(0) in page(web, "/queues/default")
    assert "No job waiting" in page(web, "/queues/invoices?shard=main")
    page(web, "/queues/default?shard=nowhere", 404)


def test_a_queue_on_the_second_shard_deletes_a_job_and_clears(web, r, billing, both):
    done(post(web, "/queues/invoices?shard=billing", {"action": "delete", "jid": jid(60)}),
         "/queues/invoices?shard=billing&done=delete&count=1")
    assert [json.loads(raw)["jid"] for raw in billing.lrange("queue:invoices", 0, -1)] == [jid(61)]
    push(r, "invoices", job(62, "invoices"))  # the same name on the first shard stays
    done(post(web, "/queues/invoices", {"action": "clear"}), "/queues?done=clear&count=1")
    assert not billing.exists("queue:invoices") and not billing.sismember("queues", "invoices")
    assert r.llen("queue:invoices") == 1


@pytest.mark.parametrize(("kind", "main_jids", "billing_jids"), [
    ("scheduled", [20, 21], [70]), ("retries", [30, 31], [80]), ("dead", [41, 40], [90])])
def test_a_set_shows_one_shard_at_a_time_with_every_shard_s_count(web, both, kind, main_jids, billing_jids):
    first = page(web, f"/{kind}")
    assert [jid(n) for n in main_jids] == re.findall(r"<code>([0-9a-f]{24})</code>", first)
    tabs = first.split('<nav class="shards"')[1].split("</nav>")[0]
    assert 'aria-current="page" data-shard="main">main <span class="count">2</span>' in tabs
    assert f'href="/{kind}?shard=billing" data-shard="billing">billing <span class="count">1</span>' in tabs
    second = page(web, f"/{kind}?shard=billing")
    assert [jid(n) for n in billing_jids] == re.findall(r"<code>([0-9a-f]{24})</code>", second)
    assert "on shard billing" in second and f'/{kind}/' in second and "?shard=billing" in second
    assert 'href="/queues/invoices?shard=billing">invoices</a>' in second
    page(web, f"/{kind}?shard=nowhere", 404)


def test_a_set_page_of_the_second_shard_reads_one_window_of_it(web, billing, second_redis, redis_server):
    now = time.time()
    billing.zadd("retry", {dump(failure(n, "invoices")): now + n for n in range(300)})
    html = ""

    def read() -> None:
        nonlocal html
        html = page(web, "/retries?shard=billing&page=3&per=25")

    seen = commands_during(second_redis, read)
    assert [c for c in seen if c.startswith("ZRANGE")] == ["ZRANGE retry 50 74 WITHSCORES"]
    assert [jid(n) for n in range(50, 75)] == re.findall(r"<code>([0-9a-f]{24})</code>", html)
    assert "page 3 of 12 · 300 in all" in html
    assert 'href="/retries?page=4&amp;per=25&amp;shard=billing" rel="next"' in html
    other = commands_during(redis_server, lambda: page(web, "/retries?shard=billing"))
    assert [c.split()[0] for c in other if c.split()[0] in ("ZRANGE", "ZCARD")] == ["ZCARD"]  # its tab


def test_retrying_a_job_on_the_second_shard_moves_it_to_its_queue_there(web, r, billing, both):
    entry = key(billing, "retry", 80)
    done(post(web, "/retries?shard=billing", {"action": "retry", "key": entry}),
         "/retries?shard=billing&done=retry&count=1")
    [raw] = billing.lrange("queue:invoices", 0, 0)
    assert json.loads(raw)["jid"] == jid(80) and billing.zcard("retry") == 0
    assert r.zcard("retry") == 2 and not r.exists("queue:invoices")
    add(billing, "retry", (failure(81, "invoices"), time.time() + 60))
    done(post(web, "/retries", {"action": "retry", "key": key(billing, "retry", 81)}),  # not on main
         "/retries?done=retry&count=0")
    assert billing.zcard("retry") == 1


def test_a_job_page_on_the_second_shard_acts_there_and_returns_to_its_tab(web, r, billing, both):
    entry = key(billing, "dead", 90)
    html = page(web, f"/dead/{entry}?shard=billing")
    assert jid(90) in html and 'action="/dead?shard=billing"' in html and "on shard billing" in html
    page(web, f"/dead/{entry}", 404)  # not on the first shard
    done(post(web, "/dead?shard=billing", {"action": "retry", "key": entry, "from": "job"},
              f"/dead/{entry}?shard=billing"), "/dead?shard=billing&done=retry&count=1")
    assert billing.zcard("dead") == 0
    assert json.loads(billing.lrange("queue:invoices", 0, 0)[0])["jid"] == jid(90)
    assert r.zcard("dead") == 2


def test_every_entry_at_once_acts_on_the_shard_shown(web, r, billing, both):
    html = page(web, "/scheduled?shard=billing")
    assert 'data-confirm="Delete: every job in scheduled on shard billing?"' in html
    done(post(web, "/scheduled?shard=billing", {"action": "delete-all"}),
         "/scheduled?shard=billing&done=delete&count=1")
    assert billing.zcard("schedule") == 0 and r.zcard("schedule") == 2
    done(post(web, "/retries?shard=billing", {"action": "kill-all"}),
         "/retries?shard=billing&done=kill&count=1")
    assert billing.zcard("dead") == 2 and r.zcard("retry") == 2 and r.zcard("dead") == 2


def test_metrics_add_each_class_up_over_the_shards(web, r, billing):
    executions(r, "AJob", 2, [10.0] * 3)
    executions(billing, "AJob", 2, [10.0] * 2, failed=1)
    executions(billing, "BillJob", 3, [70.0])
    rows = cells(page(web, "/metrics?sort=class"), "metrics")
    assert [row[:3] for row in rows] == [["AJob", "6", "1 (16.7 %)"], ["BillJob", "1", "0"]]
    hour, _ = cells(page(web, "/metrics/AJob"), "totals")
    assert hour[:3] == ["last hour", "6", "1"]


def test_periodic_reads_and_enqueues_each_entry_on_the_shard_of_its_queue(redis_server, second_redis, r,
                                                                        billing):
    entries = [Entry("nightly", "0 3 * * *", "ReportJob"), Entry("invoicing", "0 * * * *", "InvoiceJob",
                                                                  queue="invoices")]
    billing.hset("kiq:periodic:invoicing", mapping={"last": int(time.time()) - 60, "jid": jid(7)})
    web = Client(kiq.web.app(shards=Shards.parse(shards_of(redis_server, second_redis)), periodic=entries))
    rows = cells(page(web, "/periodic"), "periodic")
    assert [(row[0], row[1], row[6].split(" · ")[-1]) for row in rows] == [
        ("main", "nightly", "never"), ("billing", "invoicing", jid(7))]
    assert [row[1] for row in cells(page(web, "/periodic?q=billing"), "periodic")] == ["invoicing"]
    done(post(web, "/periodic", {"name": "invoicing"}), "/periodic?done=enqueue&count=1")
    [raw] = billing.lrange("queue:invoices", 0, -1)
    assert json.loads(raw)["class"] == "InvoiceJob" and not r.exists("queue:invoices")


def test_search_finds_jobs_on_every_shard_with_their_shard(web, r, billing, both):
    html = page(web, "/search?q=RuntimeError")
    assert "6 job(s) contain" in html
    retry = html.split('id="found-retry"')[1].split("</section>")[0]
    assert [row[0] for row in cells(retry.replace("<table>", '<table id="t">', 1), "t")] == [
        "main", "main", "billing"]
    assert f'href="/retries/{key(billing, "retry", 80)}?shard=billing"' in retry
    found = page(web, f"/search?q={jid(60)}")
    assert 'href="/queues/invoices?q=' + jid(60) + '&amp;shard=billing">queue invoices</a>' in found
    assert [each.shard for each in web.application.shards.find(jid(95))] == ["billing"]


# -- security stays as it is -----------------------------------------------------------------


def test_a_script_on_the_second_shard_renders_as_text(web, both):
    for url in ("/retries?shard=billing", "/queues/invoices", "/search?q=alert"):
        html = page(web, url)
        assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html, url


def test_read_only_and_csrf_guard_every_shard(redis_server, second_redis, billing, both):
    shards = shards_of(redis_server, second_redis)
    reader = Client(kiq.web.app(shards=shards, read_only=True))
    for url in ("/busy", "/queues/invoices", "/retries?shard=billing",
                f"/dead/{key(billing, 'dead', 90)}?shard=billing"):
        html = page(reader, url)
        assert 'method="post"' not in html and "read-only" in html, url
    token = csrf(page(Client(kiq.web.app(shards=shards)), "/retries"))
    form = {"action": "delete-all", "csrf": token}
    assert reader.post("/retries?shard=billing", data=form).status_code == 403
    writer = Client(kiq.web.app(shards=shards))
    assert writer.post("/retries?shard=billing", data={"action": "delete-all"}).status_code == 403
    assert writer.post("/retries?shard=billing", data=form).status_code == 403  # another app's token
    assert billing.zcard("retry") == 1


# -- one Redis, and ``kiq web -c`` ---------------------------------------------------------------


def test_one_redis_shows_no_shard_anywhere(redis_server, r):
    fill(r)
    for app in (kiq.web.app(redis_server.url), kiq.web.app(shards={"main": redis_server.url})):
        web = Client(app)
        for url in ("/", "/busy", "/queues", "/queues/default", "/scheduled", "/retries", "/dead",
                    f"/retries/{key(r, 'retry', 30)}", "/search?q=RecordJob", "/periodic", "/metrics"):
            html = page(web, url)
            assert "shard" not in html, url
        done(post(web, "/busy", {"action": "quiet", "identity": "web-1:101:0a0a"}),
             "/busy?done=quiet&count=1")


@pytest.fixture
def kiq_web_sharded(redis_server, second_redis, tmp_path: Path) -> Iterator[int]:
    """``kiq web -c`` on a config with two shards; its port once it accepts connections."""
    path = tmp_path / "sharded.yml"
    path.write_text(yaml.safe_dump({"shards": shards_of(redis_server, second_redis)}))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "kiq", "web", "-c", str(path), "--port", str(port)],
                               cwd=ROOT, env=sample_env(redis_server.url), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: process.poll() is not None or accepts(port), timeout=30)
        assert process.poll() is None, process.communicate(timeout=10)
        yield port
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=10)


def test_kiq_web_with_a_sharded_config_shows_every_shard(kiq_web_sharded, both):
    url = f"http://127.0.0.1:{kiq_web_sharded}/retries?shard=billing"
    with urllib.request.urlopen(url, timeout=10) as reply:
        html = reply.read().decode()
    assert jid(80) in html and 'data-shard="billing">billing <span class="count">1</span>' in html


def test_a_shard_whose_redis_is_down_is_a_503_not_a_traceback(web, second_redis, both):
    second_redis.stop()
    for url in ("/", "/retries", "/busy"):
        response = web.get(url)
        assert response.status_code == 503 and "Redis is not answering" in response.text, url

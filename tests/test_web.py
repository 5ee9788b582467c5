"""The dashboard as a WSGI application (kiq.web), through Werkzeug's test client, on a real Redis:
every page, every action, escaping, CSRF, read-only mode and the paging windows."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from conftest import ROOT, wait_for
from webdata import (
    SCRIPT,
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
    plant_hostile_records,
    plant_huge_numbers,
    plant_keys_of_another_type,
    push,
)
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Response

import kiq.web
from kiq.periodic import Entry
from kiq.web.auth import BasicAuth

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def web(redis_server) -> Client:
    return Client(kiq.web.app(redis_server.url))


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code, response.text[:2000])
    return response.text


def post(client: Client, url: str, data: dict[str, Any], form_page: str | None = None) -> TestResponse:
    """A POST as the page's own form sends it: the token comes from ``form_page`` (default ``url``)."""
    token = csrf(page(client, form_page or url))
    return client.post(url, data={**data, "csrf": token})


def done(response: TestResponse, location: str) -> None:
    assert response.status_code == 303, response.text[:2000]
    assert response.headers["Location"] == location, response.headers["Location"]


def key(r: redis.Redis, set_key: str, n: int) -> str:
    """A sorted-set entry's key as the pages name it (SCORE-JID)."""
    for raw, score in r.zrange(set_key, 0, -1, withscores=True):
        if json.loads(raw)["jid"] == jid(n):
            return f"{score!r}-{jid(n)}"
    raise AssertionError(f"{jid(n)} not in {set_key}")


def jids(html: str) -> list[str]:
    """The jids a page lists, in order."""
    return re.findall(r"<code>([0-9a-f]{24})</code>", html)


# -- pages -----------------------------------------------------------------


PAGES = {
    "/": ["Dashboard", "1,234", "56", "processed", "Redis", "version"],
    "/stats.json": ['"processed": 1234', '"retries": 2'],
    "/busy": ["web-1:101:0a0a", "1 / 10", "40.0 MB", "critical, default", jid(50), "running"],
    "/queues": ["default", "critical"],
    "/queues/default": [jid(0), jid(3), "RecordJob", "4 waiting"],
    "/scheduled": [jid(20), jid(21), "2 job(s)"],
    "/retries": [jid(30), jid(31), "RuntimeError", "boom 30"],
    "/dead": [jid(40), jid(41), "boom 40"],
    "/periodic": ["given no periodic entries"],
    "/search?q=RecordJob": [jid(0), jid(20), jid(30), jid(40), jid(50)],
}


@pytest.mark.parametrize("url", PAGES)
def test_every_page_shows_its_data(web, r, url):
    fill(r)
    html = page(web, url)
    for text in PAGES[url]:
        assert text in html, (url, text)


def test_a_job_page_shows_every_field_the_error_and_the_backtrace(web, r):
    trace = ["app/jobs.py:10:in `perform'", "kiq/processor.py:99:in `run'"]
    add(r, "retry", (failure(30, error_backtrace=trace, kwargs={"size": "large"}), time.time() + 60))
    html = page(web, f"/retries/{key(r, 'retry', 30)}")
    for text in (jid(30), "RuntimeError", "boom 30", "app/jobs.py:10:in `perform&#39;", "&#34;large&#34;",
                 "failures", "failed", "retried", "next retry"):
        assert text in html, text


ACTIVE_JOB = {"class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped": "HelloJob",
              "args": [{"job_class": "HelloJob", "job_id": "a1", "arguments": ["World", 7],
                        "queue_name": "default", "executions": 0}]}


def test_an_active_job_is_shown_by_its_own_class_and_arguments_as_sidekiq_shows_it(web, r):
    add(r, "retry", (failure(31, **ACTIVE_JOB), time.time() + 60))
    push(r, "default", job(32, **ACTIVE_JOB))
    for url in ("/retries", "/queues/default"):
        html = page(web, url)
        assert "HelloJob" in html and "&#34;World&#34;, 7" in html and "JobWrapper" not in html, url
    html = page(web, f"/retries/{key(r, 'retry', 31)}")  # its stored hash, shown whole below, names both
    assert "<h1>HelloJob " in html and re.search(r"\[\s*&#34;World&#34;,\s*7\s*\]", html), html


def test_a_job_page_says_when_no_backtrace_was_kept_and_404s_for_a_gone_job(web, r):
    add(r, "dead", (failure(40), time.time()))
    assert "none kept" in page(web, f"/dead/{key(r, 'dead', 40)}")
    add(r, "dead", (failure(41, backtrace=True, error_class="kiq.UnknownJobError"), time.time()))
    html = page(web, f"/dead/{key(r, 'dead', 41)}")
    assert "none: nothing the job raised" in html and "none kept" not in html
    page(web, f"/dead/123.5-{jid(40)}", 404)
    page(web, "/dead/not-a-key", 404)
    page(web, "/nowhere", 404)


def test_the_dashboard_draws_the_daily_history_from_sidekiqs_counters(web, r):
    today = time.strftime("%Y-%m-%d", time.gmtime())
    r.set(f"stat:processed:{today}", 321)
    r.set(f"stat:failed:{today}", 12)
    html = page(web, "/?days=7")
    assert f"{today}: 321 processed, 12 failed" in html
    assert daily_bars(html) == 7
    assert daily_bars(page(web, "/?days=90")) == 90
    assert daily_bars(page(web, "/?days=5")) == 30  # not a choice: the default


def daily_bars(html: str) -> int:
    return html.split('aria-label="processed and failed jobs per day"')[1].count('<rect class="processed"')


def test_the_dashboard_draws_the_last_hours_from_the_per_minute_execution_metrics(web, r):
    """Sidekiq keeps daily counters only: the hours come from every class's per-minute records."""
    moment = time.time()
    executions(r, "AJob", 30, [10.0] * 3, failed=1)
    executions(r, "BJob", 30, [10.0] * 2)
    executions(r, "AJob", 150, [10.0] * 4)
    executions(r, "AJob", 60 * 30, [10.0] * 9)  # 30 h ago: only in the 72 h chart

    def hour(minutes_ago: int) -> str:
        return time.strftime("%Y-%m-%d %H:00", time.gmtime(moment - 60 * minutes_ago))

    html = page(web, "/")
    hourly = html.split('<section id="hourly">')[1].split("</section>")[0]
    assert "Last 24 hours" in hourly and hourly.count('<rect class="processed"') == 24
    assert f"{hour(30)}: 6 processed, 1 failed" in hourly and f"{hour(150)}: 4 processed, 0 failed" in hourly
    assert "10 processed and 1 failed in these 24 hours" in hourly
    wide = page(web, "/?hours=72").split('<section id="hourly">')[1].split("</section>")[0]
    assert wide.count('<rect class="processed"') == 72 and f"{hour(60 * 30)}: 9 processed" in wide
    r.flushdb()
    assert "No job finished in these 24 hours" in page(web, "/")


def test_stats_json_is_what_the_live_chart_polls(web, r):
    fill(r)
    data = json.loads(page(web, "/stats.json"))
    assert {key: data[key] for key in ("processed", "failed", "busy", "enqueued", "scheduled", "retries",
                                       "dead", "processes")} == {
        "processed": 1234, "failed": 56, "busy": 1, "enqueued": 5, "scheduled": 2, "retries": 2, "dead": 2,
        "processes": 1}
    assert abs(data["time"] - time.time()) < 5


def test_static_assets_ship_in_the_package(web):
    css = web.get("/static/kiq.css")
    assert css.status_code == 200 and css.mimetype == "text/css" and b"--accent" in css.data
    assert web.get("/static/kiq.js").mimetype == "text/javascript"
    assert web.get("/static/missing.css").status_code == 404
    assert web.get("/static/..%2Fapplication.py").status_code == 404
    links = re.findall(r'(?:src|href)="([^"]*)"', page(web, "/"))
    assert links and all(link.startswith("/") for link in links), links  # nothing from another site


# -- escaping --------------------------------------------------------------


@pytest.mark.parametrize("url", ["/busy", "/queues/default", "/scheduled", "/retries", "/dead",
                                 "/search?q=alert"])
def test_a_script_in_a_job_renders_as_text(web, r, url):
    fill(r)
    html = page(web, url)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html


def test_a_script_on_a_job_page_and_in_a_queue_name_renders_as_text(web, r):
    add(r, "dead", (failure(41, args=[SCRIPT], error_message=SCRIPT), time.time()))
    push(r, "<b>evil</b>", job(1, "<b>evil</b>"))
    for html in (page(web, f"/dead/{key(r, 'dead', 41)}"), page(web, "/queues"), page(web, "/search?q=evil")):
        assert "<script>alert" not in html and "<b>evil" not in html
    assert "&lt;b&gt;evil&lt;/b&gt;" in page(web, "/queues")


def test_pages_forbid_inline_scripts_and_outside_resources(web):
    policy = web.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert web.get("/").headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'self'" in policy and web.get("/").headers["X-Frame-Options"] == "SAMEORIGIN"


def test_a_notice_shows_only_numbers_from_its_query_string(web):
    html = page(web, "/?done=delete&count=Your+session+expired&left=call+us")
    assert "Your session expired" not in html and "call us" not in html and "0 job(s) deleted" in html


def test_pages_render_what_other_writers_leave_out(web, r):
    r.sadd("processes", "old:1:aa")
    r.hset("old:1:aa", mapping={"info": json.dumps({"hostname": "old"}), "beat": time.time()})
    r.hset("old:1:aa:workers", "tid", json.dumps({"payload": {"class": "Bare"}}))  # Sidekiq 6's, no run_at
    push(r, "default", {"class": "Bare"})
    add(r, "retry", ({"class": "Bare", "error_class": "E"}, time.time()))
    for url in ("/", "/busy", "/queues/default", "/retries", "/search?q=Bare", f"/retries/{time.time()}-"):
        page(web, url, 404 if url.startswith("/retries/") else 200)
    [(_, score)] = r.zrange("retry", 0, -1, withscores=True)
    assert "Bare" in page(web, f"/retries/{score!r}-") and "Bare" in page(web, "/busy")


def test_every_page_renders_around_records_anything_with_access_could_leave(web, redis_server):
    plant_hostile_records(redis_server.url)
    for url in ("/", "/stats.json", "/busy", "/queues", "/queues/default", "/scheduled", "/retries", "/dead",
                "/search?q=a", "/metrics", "/metrics/Count"):
        page(web, url)
    assert "bad:1:aa" in page(web, "/busy") and "bad\ufffd" in page(web, "/queues")


def test_every_page_renders_around_numbers_too_big_for_a_clock_or_a_float(web, r, redis_server):
    plant_huge_numbers(redis_server.url)
    sets = (("retries", "retry", 7), ("dead", "dead", 8), ("scheduled", "schedule", 9))
    entries = [f"/{kind}/{key(r, name, n)}" for kind, name, n in sets]
    for url in ("/", "/stats.json", "/busy", "/queues", "/queues/default", "/scheduled", "/retries", "/dead",
                "/search?q=t", "/metrics", "/metrics/Foo", "/metrics/Bar", *entries):
        page(web, url)
    assert "huge:1:aa" in page(web, "/busy") and jid(7) in page(web, "/retries")


@pytest.mark.parametrize("score", [float("-inf"), -12.5, 1e-05])
def test_an_entry_whose_score_holds_a_dash_can_be_shown_and_acted_on(web, r, score):
    add(r, "retry", (failure(30), score))
    entry = key(r, "retry", 30)
    assert jid(30) in page(web, f"/retries/{entry}")
    done(post(web, "/retries", {"action": "delete", "key": entry}), "/retries?done=delete&count=1")
    assert r.zcard("retry") == 0


def test_an_action_that_meets_a_key_of_another_type_names_it_not_redis_down(web, r):
    add(r, "retry", (failure(30), time.time() + 60))
    r.set("dead", "x")
    token = csrf(page(web, "/retries"))
    response = web.post("/dead", data={"action": "delete-all", "csrf": token})
    assert response.status_code == 500 and "A key of another type" in response.text
    assert "fix or delete it" in response.text and "not answering" not in response.text


def test_a_button_that_leaves_entries_where_they_are_says_so(web, r):
    add(r, "retry", (failure(30), time.time() + 60), ("not json", time.time() + 61))
    r.hset("queue:default", "a", "b")
    done(post(web, "/retries", {"action": "retry", "key": key(r, "retry", 30)}),
         "/retries?done=retry&count=0&left=1")
    assert "1 left as they were: not job hashes" in page(web, "/retries?done=retry&count=0&left=1")
    r.delete("queue:default")
    done(post(web, "/retries", {"action": "retry-all"}), "/retries?done=retry&count=1&left=1")


def test_the_reading_pages_leave_out_what_a_key_of_another_type_holds(web, r):
    plant_keys_of_another_type(r)
    for url in ("/", "/stats.json", "/busy", "/queues", "/search?q=a", "/metrics"):
        page(web, url)
    assert "ok" in page(web, "/queues")


def test_a_payload_that_is_not_utf8_or_json_still_renders(web, redis_server):
    raw = redis.Redis.from_url(redis_server.url)
    raw.sadd("queues", "default")
    raw.lpush("queue:default", b'{"class":"X","args":["\xff\xfe"],"jid":"aa"}', b"not json at all")
    raw.zadd("dead", {b"\xff not json": time.time()})
    assert "\ufffd" in page(web, "/queues/default")
    page(web, "/dead")
    [(_, score)] = raw.zrange("dead", 0, -1, withscores=True)
    done(post(web, "/dead", {"action": "delete", "key": f"{score!r}-"}), "/dead?done=delete&count=1")
    done(post(web, "/queues/default", {"action": "delete", "jid": ""}), "/queues/default?done=delete&count=1")
    assert raw.lrange("queue:default", 0, -1) == [b'{"class":"X","args":["\xff\xfe"],"jid":"aa"}']


# -- CSRF and read-only ----------------------------------------------------


def test_a_post_without_the_sessions_token_is_refused_and_changes_nothing(web, r, redis_server):
    add(r, "retry", (failure(30), time.time() + 60))
    entry = key(r, "retry", 30)
    assert web.post("/retries", data={"action": "delete", "key": entry}).status_code == 403
    assert web.post("/retries", data={"action": "delete", "key": entry, "csrf": "0" * 64}).status_code == 403
    other = Client(kiq.web.app(redis_server.url))
    token = csrf(page(other, "/retries"))  # another browser's token, or another app's secret
    assert web.post("/retries", data={"action": "delete", "key": entry, "csrf": token}).status_code == 403
    own = csrf(page(web, "/retries"))
    accepted = web.post("/retries", data={"action": "delete", "key": entry, "csrf": own})
    assert accepted.status_code == 303  # this browser's own token from this app
    assert r.zcard("retry") == 0


def test_the_session_cookie_is_http_only_and_same_site(web):
    cookie = web.get("/").headers["Set-Cookie"]
    assert all(part in cookie for part in ("kiq_session=", "HttpOnly", "SameSite=Lax", "Path=/"))
    assert "Set-Cookie" not in web.get("/").headers  # set once per browser


def test_read_only_hides_every_button_and_refuses_every_post(redis_server, r):
    fill(r)
    secret = b"s" * 32
    reader = Client(kiq.web.app(redis_server.url, read_only=True, secret=secret))
    writer = Client(kiq.web.app(redis_server.url, secret=secret))
    entries = [Entry("hourly", "0 * * * *", "RecordJob")]
    periodic = Client(kiq.web.app(redis_server.url, read_only=True, periodic=entries))
    for url in ("/busy", "/queues/default", "/scheduled", "/retries", "/dead",
                f"/retries/{key(r, 'retry', 30)}"):
        html = page(reader, url)
        assert "read-only" in html and 'method="post"' not in html and "<button" not in html.replace(
            '<button type="submit">', ""), url
    assert 'method="post"' not in page(periodic, "/periodic")
    cookie = writer.get("/").headers["Set-Cookie"].split(";")[0].split("=")[1]
    reader.set_cookie("kiq_session", cookie)
    token = csrf(page(writer, "/retries"))
    for url, data in (("/retries", {"action": "delete-all"}), ("/queues/default", {"action": "clear"}),
                      ("/busy", {"action": "stop", "all": "1"}), ("/periodic", {"name": "hourly"})):
        refused = reader.post(url, data={**data, "csrf": token})
        assert refused.status_code == 403 and "read-only" in refused.text, url
    assert (r.zcard("retry"), r.llen("queue:default"), r.llen("web-1:101:0a0a-signals")) == (2, 4, 0)


def test_a_get_never_changes_anything(web, r):
    fill(r)
    for url in ("/retries?action=delete-all", "/queues/default?action=clear", "/busy?action=stop&all=1"):
        page(web, url)
    assert (r.zcard("retry"), r.llen("queue:default"), r.llen("web-1:101:0a0a-signals")) == (2, 4, 0)


# -- actions ---------------------------------------------------------------


def test_retries_retry_delete_and_kill_a_selection(web, r):
    now = time.time()
    add(r, "retry", *((failure(n), now + 60 + n) for n in range(6)))
    done(post(web, "/retries?page=1&q=RuntimeError", {"action": "retry", "key": [key(r, "retry", 0),
                                                                               key(r, "retry", 1)]}),
         "/retries?page=1&q=RuntimeError&done=retry&count=2")
    queued = [json.loads(raw) for raw in r.lrange("queue:default", 0, -1)]
    assert sorted(each["jid"] for each in queued) == [jid(0), jid(1)]
    assert all(each["retry_count"] == 2 for each in queued)  # a manual retry spends no try
    done(post(web, "/retries", {"action": "delete", "key": key(r, "retry", 2)}),
         "/retries?done=delete&count=1")
    done(post(web, "/retries", {"action": "kill", "key": [key(r, "retry", 3), key(r, "retry", 4)]}),
         "/retries?done=kill&count=2")
    assert [json.loads(raw)["jid"] for raw in r.zrange("retry", 0, -1)] == [jid(5)]
    assert sorted(json.loads(raw)["jid"] for raw in r.zrange("dead", 0, -1)) == [jid(3), jid(4)]
    assert "2 job(s) moved to the dead set" in page(web, "/retries?done=kill&count=2")


def test_every_entry_of_a_set_at_once(web, r):
    now = time.time()
    add(r, "retry", *((failure(n), now + n) for n in range(120)))
    done(post(web, "/retries", {"action": "kill-all"}), "/retries?done=kill&count=120")
    assert (r.zcard("retry"), r.zcard("dead")) == (0, 120)
    done(post(web, "/dead", {"action": "retry-all"}), "/dead?done=retry&count=120")
    assert (r.zcard("dead"), r.llen("queue:default")) == (0, 120)
    add(r, "schedule", *((job(n), now + 600) for n in range(3)))
    done(post(web, "/scheduled", {"action": "delete-all"}), "/scheduled?done=delete&count=3")
    assert r.zcard("schedule") == 0


def test_scheduled_run_now_and_dead_retry_from_the_jobs_own_page(web, r):
    add(r, "schedule", (job(20), time.time() + 600))
    add(r, "dead", (failure(40), time.time()))
    entry = key(r, "schedule", 20)
    done(post(web, "/scheduled", {"action": "retry", "key": entry, "from": "job"}, f"/scheduled/{entry}"),
         "/scheduled?done=retry&count=1")
    entry = key(r, "dead", 40)
    done(post(web, "/dead", {"action": "retry", "key": entry, "from": "job"}, f"/dead/{entry}"),
         "/dead?done=retry&count=1")
    assert sorted(json.loads(raw)["jid"] for raw in r.lrange("queue:default", 0, -1)) == [jid(20), jid(40)]
    assert r.zcard("schedule") == r.zcard("dead") == 0


def test_an_action_a_set_does_not_offer_is_a_bad_request(web, r):
    add(r, "dead", (failure(40), time.time()))
    for action in ("kill", "explode", "retry-some"):
        assert post(web, "/dead", {"action": action, "key": key(r, "dead", 40)}).status_code == 400
    assert r.zcard("dead") == 1


def test_a_queue_deletes_one_job_and_clears_after_confirming(web, r):
    push(r, "default", *(job(n) for n in range(3)))
    done(post(web, "/queues/default?page=1", {"action": "delete", "jid": jid(1)}),
         "/queues/default?page=1&done=delete&count=1")
    assert [json.loads(raw)["jid"] for raw in r.lrange("queue:default", 0, -1)] == [jid(2), jid(0)]
    html = page(web, "/queues/default")
    assert 'data-confirm="Delete the queue default and every job in it?"' in html
    done(post(web, "/queues/default", {"action": "clear"}), "/queues?done=clear&count=2")
    assert not r.exists("queue:default") and not r.sismember("queues", "default")


def test_a_queue_named_like_a_query_string_acts_on_itself_not_on_the_queue_it_names(web, r):
    """A queue page's forms post to its own path: a crafted name such as ``critical?order=newest``
    must not make Delete remove the job of the same jid from ``critical``."""
    push(r, "critical", job(1, "critical"))
    push(r, "critical?order=newest", job(1, "critical?order=newest"))
    html = page(web, "/queues/critical%3Forder%3Dnewest")
    assert 'action="/queues/critical%3Forder%3Dnewest"' in html
    done(post(web, "/queues/critical%3Forder%3Dnewest", {"action": "delete", "jid": jid(1)}),
         "/queues/critical%3Forder%3Dnewest?done=delete&count=1")
    assert r.llen("queue:critical") == 1 and r.llen("queue:critical?order=newest") == 0


def test_a_queue_or_jid_with_a_slash_or_a_line_break_has_its_page_and_its_buttons(web, r):
    push(r, "a/b", job(1, "a/b", jid="x/1"))
    push(r, "line\r\nSet-Cookie: x=1", job(2, "line\r\nSet-Cookie: x=1"))
    add(r, "retry", (failure(3, jid="y/3"), 1000.0))
    assert 'href="/queues/a/b"' in page(web, "/queues") and "x/1" in page(web, "/queues/a/b")
    assert "y/3" in page(web, "/retries/1000.0-y/3")
    done(post(web, "/queues/a/b", {"action": "delete", "jid": "x/1"}), "/queues/a/b?done=delete&count=1")
    response = post(web, "/queues/line%0D%0ASet-Cookie:%20x=1", {"action": "delete", "jid": jid(2)})
    assert response.status_code == 303 and "Set-Cookie: x" not in str(response.headers)
    assert response.headers["Location"].startswith("/queues/line%0D%0ASet-Cookie")
    assert r.llen("queue:a/b") == 0 and r.llen("queue:line\r\nSet-Cookie: x=1") == 0


def test_busy_quiets_and_stops_one_process_or_all(web, r):
    heartbeat(r, "web-1:101:0a0a")
    heartbeat(r, "web-2:202:0b0b")
    done(post(web, "/busy", {"action": "quiet", "identity": "web-1:101:0a0a"}), "/busy?done=quiet&count=1")
    assert r.lrange("web-1:101:0a0a-signals", 0, -1) == ["TSTP"] and not r.exists("web-2:202:0b0b-signals")
    done(post(web, "/busy", {"action": "stop", "all": "1"}), "/busy?done=stop&count=2")
    assert r.lrange("web-2:202:0b0b-signals", 0, -1) == ["TERM"]
    assert r.lrange("web-1:101:0a0a-signals", 0, -1) == ["TERM", "TSTP"]
    done(post(web, "/busy", {"action": "quiet", "identity": "gone:1:ff"}), "/busy?done=quiet&count=0")
    assert not r.exists("gone:1:ff-signals")  # a process that is not live gets no signals list


def test_busy_shows_a_quiet_process_as_quiet_without_a_quiet_button(web, r):
    heartbeat(r, "web-1:101:0a0a", quiet=True)
    html = page(web, "/busy")
    assert 'class="badge quiet">quiet' in html and 'value="quiet">Quiet</button>' not in html


def test_periodic_lists_entries_and_enqueues_one_now(redis_server, r):
    entries = [Entry("nightly", "0 3 * * *", "RecordJob", args=("n",), tz="Europe/Berlin", queue="low"),
               Entry("hourly", "0 * * * *", "RecordJob")]
    web = Client(kiq.web.app(redis_server.url, periodic=entries))
    html = page(web, "/periodic")
    assert "nightly" in html and "0 3 * * *" in html and "Europe/Berlin" in html and "never" in html
    assert "hourly" not in page(web, "/periodic?q=night")
    done(post(web, "/periodic", {"name": "nightly"}), "/periodic?done=enqueue&count=1")
    [raw] = r.lrange("queue:low", 0, -1)
    payload = json.loads(raw)
    assert payload["class"] == "RecordJob" and payload["args"] == ["n"]
    assert payload["periodic"]["name"] == "nightly" and payload["periodic"]["manual"] is True
    assert r.zcard("kiq:periodic:nightly:ticks") == 0  # no tick recorded: the schedule is untouched
    assert post(web, "/periodic", {"name": "missing"}).status_code == 404


# -- paging windows and filters --------------------------------------------


def test_a_page_reads_one_window_of_a_large_set(web, r, redis_server):
    now = time.time()
    with r.pipeline() as pipe:
        for start in range(0, 5000, 1000):
            pipe.zadd("retry", {dump(failure(n)): now + n for n in range(start, start + 1000)})
        pipe.execute()
    html = ""

    def read() -> None:
        nonlocal html
        html = page(web, "/retries?page=3&per=50")

    commands = commands_during(redis_server, read)
    assert [c for c in commands if c.startswith("ZRANGE")] == ["ZRANGE retry 100 149 WITHSCORES"]
    assert [jid(n) for n in range(100, 150)] == jids(html)
    assert "page 3 of 100 · 5,000 in all" in html
    assert 'href="/retries?page=4&amp;per=50" rel="next"' in html and 'rel="last"' in html
    latest = page(web, "/retries?order=desc")
    assert jids(latest)[:2] == [jid(4999), jid(4998)]


def test_a_filtered_page_reads_windows_only_until_it_is_full(web, r, redis_server):
    now = time.time()
    add(r, "retry", *((failure(n, error_message="rare" if n % 100 == 7 else "common"), now + n)
                      for n in range(3000)))
    html = ""

    def read() -> None:
        nonlocal html
        html = page(web, "/retries?q=RARE&per=25")

    commands = commands_during(redis_server, read)
    ranges = [c for c in commands if c.startswith("ZRANGE")]
    assert ranges == ["ZRANGE retry 0 999 WITHSCORES", "ZRANGE retry 1000 1999 WITHSCORES",
                      "ZRANGE retry 2000 2999 WITHSCORES"]
    assert jids(html) == [jid(n) for n in range(7, 3000, 100)][:25]
    assert "of the matches" in html and 'rel="next"' in html
    second = page(web, "/retries?q=RARE&per=25&page=2")
    assert jids(second) == [jid(n) for n in range(2507, 3000, 100)]
    assert 'rel="next"' not in second


def test_a_queue_pages_oldest_or_newest_first_and_filters(web, r):
    push(r, "default", *(job(n) for n in range(60)))
    assert jids(page(web, "/queues/default?page=2"))[:2] == [jid(25), jid(26)]
    assert jids(page(web, "/queues/default?order=newest"))[:2] == [jid(59), jid(58)]
    assert jids(page(web, "/queues/default?q=t42")) == [jid(42)]


def test_busy_and_queues_page_and_filter_their_lists(web, r):
    for n in range(30):
        heartbeat(r, f"host-{n:02d}:{n + 100}:ab", tag="web" if n % 2 else "batch")
        push(r, f"queue-{n:02d}", job(n, f"queue-{n:02d}"))
    busy = page(web, "/busy")
    assert "host-00:100:ab" in busy and "host-25:125:ab" not in busy and "page 1 of 2" in busy
    assert "host-25:125:ab" in page(web, "/busy?page=2")
    filtered = page(web, "/busy?q=batch")
    assert "host-00:100:ab" in filtered and "host-01:101:ab" not in filtered
    assert "queue-29" in page(web, "/queues?page=2") and "queue-29" not in page(web, "/queues")
    assert "queue-07" in page(web, "/queues?q=07") and "queue-08" not in page(web, "/queues?q=07")


def test_nonsense_in_the_query_string_falls_back_to_defaults(web, r):
    push(r, "default", job(1))
    for query in ("page=-3", "page=x", "per=7", "per=", "order=sideways"):
        assert jid(1) in page(web, f"/queues/default?{query}")
    assert "Last 30 days" in page(web, "/?days=x")


# -- search ----------------------------------------------------------------


def test_search_finds_a_jid_a_class_or_an_argument_everywhere(web, r):
    fill(r)
    push(r, "default", job(60, job_class="InvoiceJob", args=["customer-777"]))
    html = page(web, "/search?q=customer-777")
    assert jid(60) in html and "queue default" in html and "1 job(s) contain" in html
    running = page(web, f"/search?q={jid(50)}")
    assert 'href="/busy?q=web-1:101:0a0a"' in running
    retry = page(web, f"/search?q={jid(30)}")
    assert f'href="/retries/{key(r, "retry", 30)}"' in retry
    assert "0 job(s) contain" in page(web, "/search?q=nothing-like-this")


# -- mounting, auth, Redis down ---------------------------------------------


def test_mounted_under_a_prefix_every_link_form_and_cookie_keeps_it(redis_server, r):
    fill(r)

    def host(environ: Any, start_response: Any) -> Any:
        return Response("the host app")(environ, start_response)

    mounted = Client(DispatcherMiddleware(host, {"/admin/kiq": kiq.web.app(redis_server.url)}))
    first = mounted.get("/admin/kiq/retries")
    assert "Path=/admin/kiq/" in first.headers["Set-Cookie"]
    links = re.findall(r'(?:href|src|action)="([^"]+)"', first.text)
    assert links and all(link.startswith("/admin/kiq/") for link in links), links
    assert mounted.get("/admin/kiq/static/kiq.css").status_code == 200
    assert page(mounted, "/") == "the host app"
    done(post(mounted, "/admin/kiq/retries", {"action": "delete", "key": key(r, "retry", 30)}),
         "/admin/kiq/retries?done=delete&count=1")


def test_basic_auth_asks_for_the_password(redis_server):
    guarded = Client(BasicAuth(kiq.web.app(redis_server.url), "kiq", "pa:ss wörd"))
    asked = guarded.get("/")
    assert asked.status_code == 401 and asked.headers["WWW-Authenticate"].startswith('Basic realm="kiq"')
    assert guarded.get("/", auth=("kiq", "wrong")).status_code == 401
    assert guarded.get("/", auth=("someone", "pa:ss wörd")).status_code == 401
    assert guarded.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert guarded.get("/", auth=("kiq", "pa:ss wörd")).status_code == 200


def test_redis_down_is_a_clear_503_not_a_traceback(redis_server):
    web = Client(kiq.web.app(redis_server.url))
    redis_server.stop()
    response = web.get("/retries")
    assert response.status_code == 503 and "Redis is not answering" in response.text
    assert "Traceback" not in response.text


def test_kiq_imports_and_runs_its_commands_without_the_web_extra():
    """Werkzeug, Jinja2 and waitress blocked: kiq, its client and CLI load; ``kiq web`` says what to
    install."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("werkzeug", "jinja2", "waitress", "markupsafe"):
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
import kiq, kiq.api, kiq.client, kiq.cli, kiq.web
sys.argv = ["kiq", "web"]
kiq.cli.main()
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "kiq web needs the web extra: pip install 'kiq[web]'" in done.stderr


# -- metrics ------------------------------------------------------------------


def cells(html: str, table: str) -> list[list[str]]:
    """The rows of a table's body (the table of that id) as the texts of their cells."""
    body = html.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [[" ".join(re.sub(r"<[^>]+>", " ", cell).split())
             for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)] for row in rows]


def metric_rows(html: str) -> list[list[str]]:
    return cells(html, "metrics")


def test_metrics_list_each_class_s_counts_and_run_times(web, r):
    executions(r, "Billing::InvoiceJob", 2, [10.0] * 50 + [70.0] * 50, failed=5)
    executions(r, "Billing::InvoiceJob", 30, [10.0] * 100)
    executions(r, "ReportJob", 5, [4000.0])
    executions(r, "FlakyJob", 3, [], failed=4)
    executions(r, "OldJob", 600, [10.0])  # ten hours ago
    rows = metric_rows(page(web, "/metrics"))
    # 150 runs under 20 ms and 50 from 65 to 100 ms: the median at 100/150 of the first bucket, p95
    # at 40/50 of the other. 4 s falls from 3.8 to 5.75 s.
    assert rows == [
        ["Billing::InvoiceJob", "205", "5 (2.4 %)", "5.0 s", "25 ms", "13 ms", "93 ms", "99 ms"],
        ["ReportJob", "1", "0", "4.0 s", "4.0 s", "4.8 s", "5.7 s", "5.7 s"],
        ["FlakyJob", "4", "4 (100.0 %)", "0.0 s", "-", "-", "-", "-"],
    ]
    day = [row[0] for row in metric_rows(page(web, "/metrics?hours=24"))]
    assert day == ["Billing::InvoiceJob", "ReportJob", "OldJob", "FlakyJob"]
    html = page(web, "/metrics")
    assert 'href="/metrics/Billing::InvoiceJob"' in html and 'aria-sort="descending"' in html
    assert "Metrics" in page(web, "/") and 'id="nav-metrics"' in page(web, "/")


@pytest.mark.parametrize(("query", "order"), [
    ("sort=class", ["AJob", "BJob", "CJob"]),
    ("sort=class&order=desc", ["CJob", "BJob", "AJob"]),
    ("sort=processed", ["BJob", "CJob", "AJob"]),
    ("sort=processed&order=asc", ["AJob", "CJob", "BJob"]),
    ("sort=failed", ["CJob", "AJob", "BJob"]),
    ("sort=p99", ["AJob", "BJob", "CJob"]),  # CJob has no run time: last whichever the order
    ("sort=p50&order=asc", ["BJob", "AJob", "CJob"]),
    ("sort=mean", ["AJob", "BJob", "CJob"]),
    ("sort=nonsense", ["AJob", "BJob", "CJob"]),  # total time, largest first
])
def test_the_metrics_table_sorts_on_every_column(web, r, query, order):
    executions(r, "AJob", 1, [500.0], failed=2)
    executions(r, "BJob", 1, [5.0] * 9)
    executions(r, "CJob", 1, [], failed=4)
    assert [row[0] for row in metric_rows(page(web, f"/metrics?{query}"))] == order


def test_a_metrics_heading_sorts_its_column_and_again_the_other_way(web, r):
    executions(r, "AJob", 1, [500.0])
    html = page(web, "/metrics?sort=p95&hours=8")
    assert 'href="/metrics?hours=8&amp;order=asc&amp;sort=p95" id="sort-p95"' in html  # sorted on: turns
    assert 'href="/metrics?hours=8&amp;order=desc&amp;sort=processed"' in html
    assert 'href="/metrics?hours=8&amp;order=asc&amp;sort=class"' in html


def test_metrics_filter_on_the_class_name(web, r):
    executions(r, "Billing::InvoiceJob", 1, [10.0])
    executions(r, "ReportJob", 1, [10.0])
    assert [row[0] for row in metric_rows(page(web, "/metrics?q=billing"))] == ["Billing::InvoiceJob"]
    assert "No job of a class matching this filter" in page(web, "/metrics?q=nothing")
    assert "last 1 h" in page(web, "/metrics?hours=5&sort=x&order=y")  # not choices: the defaults
    assert "last 1 h" in page(web, "/metrics?hours=72")  # a class's page only: the table reads every class
    r.flushdb()
    assert "No job finished in the last 1 h" in page(web, "/metrics")


def test_a_class_s_metrics_page_totals_the_hour_and_the_day_and_charts_each_minute(web, r):
    executions(r, "ReportJob", 1, [100.0, 200.0], failed=1)
    executions(r, "ReportJob", 3, [4000.0])
    executions(r, "ReportJob", 120, [50.0] * 10)
    executions(r, "OtherJob", 1, [1.0])
    html = page(web, "/metrics/ReportJob")
    hour, day = cells(html, "totals")
    assert hour[:5] == ["last hour", "4", "1", "4.3 s", "1.4 s"]
    assert day[:5] == ["last day", "14", "1", "4.8 s", "369 ms"]
    charts = re.findall(r"<svg .*?</svg>", html, re.S)
    assert [re.search(r'aria-label="([^"]*)"', chart).group(1) for chart in charts] == [
        "ReportJob: jobs per minute", "ReportJob: run times"]
    assert charts[0].count('<rect class="hover"') == 60 and '<polyline class="processed"' in charts[0]
    assert "processed 3, failed 1" in charts[0] and "processed 1, failed 0" in charts[0]
    assert all(f'class="{label}"' in charts[1] for label in ("p50", "p95", "p99"))
    assert "p50 -, p95 -, p99 -" in charts[1]  # a minute without a run time: no point
    assert "OtherJob" not in html
    day = page(web, "/metrics/ReportJob?hours=24")
    assert "Jobs per 12 minutes" in day and day.count('<rect class="hover"') == 2 * 120
    assert "processed 10, failed 0" in day
    assert page(web, "/metrics/ReportJob?hours=72").count("Jobs per 36 minutes") == 1


def test_a_class_without_records_has_an_empty_metrics_page(web, r):
    html = page(web, "/metrics/Nothing::Here")
    assert "Metrics</a> / Nothing::Here" in html and cells(html, "totals")[0][:3] == ["last hour", "0", "0"]
    assert 'polyline class="p50"' not in html


def test_a_script_in_a_class_name_renders_as_text_on_the_metrics_pages(web, r):
    executions(r, SCRIPT, 1, [10.0])
    for html in (page(web, "/metrics"), page(web, f"/metrics/{SCRIPT}")):
        assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html


def test_the_metrics_page_reads_each_minute_once_and_only_the_histograms_it_needs(web, r, redis_server):
    executions(r, "AJob", 1, [10.0])
    executions(r, "AJob", 2, [], failed=1)
    executions(r, "BJob", 1, [10.0])
    commands = commands_during(redis_server, lambda: page(web, "/metrics"))
    assert len([c for c in commands if c.startswith("HGETALL")]) == 60
    [read] = [c for c in commands if c.startswith("MGET")]
    assert len(read.split()) == 3 and "AJob-" in read and "BJob-" in read  # not AJob's failed minute
    assert not [c for c in commands if c.split()[0] in ("KEYS", "SCAN")]


def test_busy_shows_a_generation_column_only_where_a_process_stores_one(web, r):
    heartbeat(r, "web-1:101:0a0a")
    assert "generation</th>" not in page(web, "/busy")
    info = json.loads(r.hget("web-1:101:0a0a", "info"))
    r.hset("web-1:101:0a0a", "info", json.dumps({**info, "generation": 7}))
    html = page(web, "/busy")
    assert '<th class="num">generation</th>' in html and '<td class="num generation">7</td>' in html


def test_kiqs_workers_publish_their_generation_which_busy_shows_after_a_reload(web, r, start_kiq):
    kiq = start_kiq(processes=1, heartbeat_interval=0.3)

    def generations() -> set[int]:
        infos = [json.loads(r.hget(ident, "info") or "{}") for ident in r.smembers("processes")]
        return {info.get("generation") for info in infos}

    wait_for(lambda: generations() == {1})
    kiq.signal(signal.SIGHUP)
    wait_for(lambda: generations() == {2}, timeout=30)
    html = page(web, "/busy")
    assert '<th class="num">generation</th>' in html and '<td class="num generation">2</td>' in html


# -- what a first walk through every page found ----------------------------------


def test_a_page_past_the_end_says_so_and_links_to_the_last_page(web, r):
    add(r, "retry", *((failure(n), time.time() + 60 + n) for n in range(30)))
    push(r, "default", job(1))
    html = page(web, "/retries?page=9")
    assert "Page 9 is past the end of this list (30 in all, 2 pages)" in html
    assert 'href="/retries?page=2" rel="last"' in html and "No job here" not in html
    assert "Page 5 is past the end" in page(web, "/queues/default?page=5")
    assert "Page 3 is past the end" in page(web, "/busy?page=3")
    assert "Page 2 is past the end" in page(web, "/queues?page=2")
    filtered = page(web, "/retries?q=boom&page=9")
    assert "Page 9 is past the end of this list:" in filtered
    assert 'href="/retries?q=boom" rel="first"' in filtered
    assert "No job here matches this filter" in page(web, "/retries?q=nothing")
    huge = "9" * 30  # past Redis's 64-bit offsets: was a 503 "Redis is not answering"
    for path in ("/retries", "/queues/default", "/dead", "/scheduled"):
        assert "is past the end of this list" in page(web, f"{path}?page={huge}")
    assert "is past the end of this list:" in page(web, f"/retries?q=boom&page={huge}")


def test_periodic_says_when_no_entry_matches_the_filter(redis_server):
    entry = Entry("nightly", "0 3 * * *", "ReportJob", queue="low")
    html = page(Client(kiq.web.app(redis_server.url, periodic=[entry])), "/periodic?q=nothing")
    assert "No periodic entry matches this filter" in html and '<table id="periodic">' not in html


def test_deleting_or_killing_a_selection_asks_first_and_an_empty_selection_says_so(web, r):
    add(r, "retry", (failure(1), time.time() + 60))
    html = page(web, "/retries")
    assert 'value="delete" class="danger" data-confirm="Delete: the selected jobs?"' in html
    assert 'value="kill" class="danger" data-confirm="Kill: the selected jobs?"' in html
    add(r, "schedule", (job(2), time.time() + 60))
    assert ">Retry all now</button>" in html and ">Run all now</button>" in page(web, "/scheduled")
    done(post(web, "/retries", {"action": "delete"}), "/retries?done=none&count=0")
    assert "0 jobs changed: none was selected" in page(web, "/retries?done=none&count=0")
    assert r.zcard("retry") == 1


def test_failures_count_the_first_failure_where_retry_count_is_still_0(web, r):
    add(r, "retry", (failure(1, retry_count=0, retry=3), time.time() + 60))
    add(r, "dead", (failure(2, retry=0, retry_count=0), time.time() - 60))
    assert cells(page(web, "/retries"), "jobs")[0][5] == "1"
    html = page(web, f"/retries/{key(r, 'retry', 1)}")
    assert "retries allowed</th><td>up to 3</td>" in html and "failures</th><td>1 " in html
    dead = page(web, f"/dead/{key(r, 'dead', 2)}")
    assert "none: the first failure sends the job to Dead" in dead


def test_the_processed_and_failed_cards_lead_to_each_class_s_metrics(web, r):
    html = page(web, "/")
    assert '<a class="card" href="/metrics"' in html
    assert '<a class="card failed" href="/metrics?sort=failed&amp;order=desc"' in html


def test_running_jobs_are_listed_by_process_longest_running_first(web, r):
    now = time.time()
    work = {"t1": {"queue": "default", "run_at": int(now - 5), "payload": dump(job(1))},
            "t2": {"queue": "default", "run_at": int(now - 50), "payload": dump(job(2))},
            "t3": {"queue": "default", "run_at": int(now - 20), "payload": dump(job(3))}}
    heartbeat(r, "web-1:101:0a0a", busy=3)
    r.delete("web-1:101:0a0a:work")
    r.hset("web-1:101:0a0a:work", mapping={tid: json.dumps(each) for tid, each in work.items()})
    assert [row[6] for row in cells(page(web, "/busy"), "running")] == [jid(2), jid(3), jid(1)]


def test_queues_and_busy_show_the_jobs_workers_hold_but_have_not_started(web, r):
    heartbeat(r, "web-1:101:0a0a")
    push(r, "default", job(1, enqueued_at=time.time() - 30))  # the prefetched ones are older
    r.hset("web-1:101:0a0a", "prefetched", json.dumps({"default": [4, time.time() - 90], "low": [2, None]}))
    r.rpush("kiq:suspects:default", dump(job(2)))  # a job that waits to run alone (kiq.recovery)
    queues = page(web, "/queues")
    assert re.search(r'<a href="[^"]*queues/default">default</a></td><td class="num">1</td>'
                     r'<td class="num prefetched">4</td><td class="num suspects">1</td>'
                     r'<td class="num">1.5 min', queues), queues
    assert '<td class="num prefetched">6</td>' in page(web, "/busy")

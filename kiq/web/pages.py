"""What each page shows: every handler reads one window of its list (kiq.web.paging) and renders.

The query string holds all of a page's state (page, per, filter, order, days), so every page
can be bookmarked and reloaded.
"""

from __future__ import annotations

import json
import mimetypes
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from kiq import api as kiq_api
from kiq.api import API, Job, QueueSummary, SortedSet, Stats
from kiq.web import charts, paging

if TYPE_CHECKING:
    from kiq.web.application import View

DAYS = (7, 30, 90)
HOURS = (12, 24, 72)  # 72 h: the default metrics_retention of the per-minute records
SET_TITLES = {"scheduled": "Scheduled", "retries": "Retries", "dead": "Dead"}
STATIC = resources.files("kiq.web").joinpath("static")
NEWEST_FIRST = {"scheduled": False, "retries": False, "dead": True}  # the default order of each set


def dashboard(view: View) -> Response:
    shards = view.shards
    days = paging.choice(view.request.args.get("days"), DAYS, 30)
    daily = shards.history(days)
    hours = paging.choice(view.request.args.get("hours"), HOURS, 24)
    hourly = shards.hourly(hours)
    processes = shards.processes()
    each = shards.stats()
    return view.render("dashboard.html", stats=kiq_api.total(each), days=days, choices=DAYS, daily=daily,
                       chart=charts.bars(daily, "day", lambda date: date[5:]), hours=hours,
                       hour_choices=HOURS, hourly=hourly,
                       hourly_chart=charts.bars(hourly, "hour", lambda hour: hour[11:]),
                       queues=every_queue(view)[:10],
                       threads=sum(p.concurrency for p in processes),
                       shard_stats=each,
                       redis={name: kiq_api.redis_info(api) for name, api in shards.apis.items()})


def stats(view: View) -> Response:
    """The dashboard's live numbers, polled by its script: every shard's added up (and, with
    several, each one's under ``shards``)."""
    each = view.shards.stats()
    data: dict[str, Any] = {"time": time.time(), **live(kiq_api.total(each))}
    if view.sharded:
        data["shards"] = {name: live(figures) for name, figures in each.items()}
    return Response(json.dumps(data), content_type="application/json")


def live(s: Stats) -> dict[str, int]:
    return {"processed": s.processed, "failed": s.failed, "busy": s.busy, "enqueued": s.enqueued,
            "scheduled": s.scheduled, "retries": s.retries, "dead": s.dead, "processes": s.processes}


def busy(view: View) -> Response:
    processes = view.shards.processes()
    page = paging.of(paging.Paging.parse(view.request.args), processes,
                     lambda p: " ".join([p.identity, str(p.info.get("tag", "")),
                                         " ".join(p.queues), p.shard if view.sharded else ""]))
    shards = {name: index for index, name in enumerate(view.shards.apis)}  # in the config's order
    running = sorted((found for process in page.items for found in kiq_api.running(process)),
                     key=lambda found: (shards[found.shard], found.name, found.since or 0))  # longest first
    return view.render("busy.html", page=page, running=running, now=time.time(), count=len(processes),
                       busy=sum(p.busy for p in processes),
                       threads=sum(p.concurrency for p in processes))


def queues(view: View) -> Response:
    page = paging.of(paging.Paging.parse(view.request.args), every_queue(view),
                     lambda q: f"{q.name} {q.shard}" if view.sharded else q.name)
    return view.render("queues.html", page=page)


def every_queue(view: View) -> list[QueueSummary]:
    """Every queue of every shard by name (a queue found on two shards: in the shards' order)."""
    return sorted(view.shards.queue_summaries(), key=lambda q: q.name)


def queue(view: View, name: str) -> Response:
    shard = view.queue_shard(name)
    q = view.shards.api(shard).queue(name)
    newest = view.request.args.get("order") == "newest"

    def window(start: int, count: int) -> list[Job]:
        return kiq_api.queue_window(q, start, count, newest)

    def matches(text: str, skip: int, count: int) -> tuple[list[Job], bool]:
        return kiq_api.queue_matching(q, text, skip, count, newest)

    page = paging.jobs(paging.Paging.parse(view.request.args), window, q.size, matches)
    return view.render("queue.html", name=name, page=page, newest=newest, latency=q.latency(), shard=shard)


def sorted_set(view: View, kind: str) -> Response:
    entries = entries_of(view, kind)
    order = view.request.args.get("order")
    newest = order == "desc" if order in ("asc", "desc") else NEWEST_FIRST[kind]

    def window(start: int, count: int) -> list[Job]:
        return kiq_api.sorted_window(entries, start, count, newest)

    def matches(text: str, skip: int, count: int) -> tuple[list[Job], bool]:
        return kiq_api.sorted_matching(entries, text, skip, count, newest)

    page = paging.jobs(paging.Paging.parse(view.request.args), window, entries.size, matches)
    return view.render("sorted_set.html", kind=kind, title=SET_TITLES[kind], page=page, newest=newest,
                       now=time.time(), tabs=shard_tabs(view, kind))


def shard_tabs(view: View, kind: str) -> dict[str, int]:
    """With several shards, each one's count of entries of ``kind`` (a ZCARD each), for the tabs
    that choose the shard a set's page shows: paging stays one window of one shard's set."""
    if not view.sharded:
        return {}
    return {name: entries_in(api, kind).size() for name, api in view.shards.apis.items()}


def job(view: View, kind: str, key: str) -> Response:
    found = entry_at(view, kind, key)
    if found is None:
        raise NotFound("No such job here: it may have run, moved or been deleted since.")
    return view.render("job.html", kind=kind, title=SET_TITLES[kind], job=found, key=key)


def periodic(view: View) -> Response:
    """Each entry with its last and next tick, read on the shard of its queue, where the master
    fires it and keeps its state."""
    entries = view.dashboard.periodic
    rows = view.shards.periodic(entries)
    page = paging.of(paging.Paging.parse(view.request.args), rows,
                     lambda row: f"{row['name']} {row['class']} {row['queue']}"
                                 + (f" {row['shard']}" if view.sharded else ""))
    return view.render("periodic.html", page=page, declared=bool(entries))


def search(view: View) -> Response:
    text = view.request.args.get("q", "").strip()
    places = view.shards.search(text) if text else {}
    return view.render("search.html", text=text, places=places, limit=25, titles=SET_TITLES)


def entries_of(view: View, kind: str) -> SortedSet:
    """The set a page or an action names, on its shard (``?shard=``, else the first)."""
    return entries_in(view.api, kind)


def entries_in(api: API, kind: str) -> SortedSet:
    return {"scheduled": api.scheduled, "retries": api.retries, "dead": api.dead}[kind]


def entry_at(view: View, kind: str, key: str) -> Job | None:
    """The entry a page's key names: ``SCORE-JID``, as Sidekiq's Web UI names them. The score
    ends at the first dash after which what comes before reads as a number: a score may hold a
    dash itself (``-inf``, ``1e-05``)."""
    for at in (index for index, char in enumerate(key) if char == "-" and index > 0):
        try:
            when = float(key[:at])
        except ValueError:
            continue
        return kiq_api.entry(entries_of(view, kind), when, key[at + 1:])
    return None


def key_of(job: Job) -> str:
    return f"{job.score!r}-{job.jid}"


def static(view: View, name: str) -> Response:
    """A file the package ships in kiq/web/static; any other name is not found."""
    path = STATIC.joinpath(name)
    if "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound()
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(path.read_bytes(), mimetype=mimetype, headers={"Cache-Control": "max-age=86400"})

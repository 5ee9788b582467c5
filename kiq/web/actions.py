"""What each button does. Every one is a POST that kiq.web.application has already checked
(CSRF token, read-only mode); each changes Redis through kiq.api, as the ``kiq`` commands do,
then sends the browser back to the page it came from."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from werkzeug.exceptions import BadRequest, NotFound
from werkzeug.wrappers import Response

from kiq.client import Client
from kiq.periodic import enqueue_now
from kiq.web import pages

if TYPE_CHECKING:
    from kiq.web.application import View

SET_ACTIONS = {"scheduled": ("retry", "delete", "kill"), "retries": ("retry", "delete", "kill"),
               "dead": ("retry", "delete")}


def signal(view: View) -> Response:
    """Quiet or stop one process (``identity`` on ``shard``, the first by default), or every
    live one of every shard (``all``)."""
    action = view.request.form.get("action")
    if action not in ("quiet", "stop"):
        raise BadRequest(f"unknown action {action!r}")
    if view.request.form.get("all"):
        apis = list(view.shards.apis.values())
    else:
        apis = [view.shards.api(view.named(view.request.form.get("shard"), view.shards.default.shard))]
    count = failed = 0
    for api in apis:
        live = {process.identity for process in api.processes()}
        wanted = live if view.request.form.get("all") else {view.request.form.get("identity", "")}
        for identity in sorted(wanted & live):
            try:
                getattr(api, action)(identity)
            except redis.ResponseError:  # its signals key is of another type: the others are still asked
                failed += 1
                continue
            count += 1
    return view.done(action, count, left=failed)


def change_queue(view: View, name: str) -> Response:
    """Delete one job (by ``jid``) from a queue, or clear the queue, on the queue's page's shard."""
    queue = view.shards.api(view.queue_shard(name)).queue(name)
    action = view.request.form.get("action")
    if action == "delete":
        return view.done("delete", int(queue.delete(view.request.form.get("jid", ""))))
    if action == "clear":
        return view.done("clear", queue.clear(), "queues")
    raise BadRequest(f"unknown action {action!r}")


def change_set(view: View, kind: str) -> Response:
    """Retry (run now), delete or kill the chosen entries of a sorted set: those named by ``key``
    fields (a selection, or one job from its own page), or with ``ACTION-all`` every entry."""
    action, _, scope = view.request.form.get("action", "").partition("-")
    if action not in SET_ACTIONS[kind] or scope not in ("", "all"):
        raise BadRequest(f"unknown action {action!r} for {kind}")
    entries = pages.entries_of(view, kind)
    if scope == "all":
        done = int(getattr(entries, f"{action}_all")())
        return view.done(action, done, left=entries.size())
    keys = view.request.form.getlist("key")
    if not keys:  # a button for the selection pressed with nothing ticked
        return view.done("none", 0)
    jobs = [job for key in keys if (job := pages.entry_at(view, kind, key))]
    done = int(getattr(entries, action)(jobs))
    left = entries.still_in(jobs)
    if view.request.form.get("from") == "job":
        return view.done(action, done, "sorted_set", left=left, kind=kind, **view.on(view.shard))
    return view.done(action, done, left=left)


def enqueue_periodic(view: View) -> Response:
    """Enqueue one run of a periodic entry now, outside its schedule, on the shard of its queue."""
    name = view.request.form.get("name")
    entry = next((entry for entry in view.dashboard.periodic if entry.name == name), None)
    if entry is None:
        raise NotFound(f"no periodic entry named {name!r}")
    api = view.shards.api_for(entry.queue)
    enqueue_now(Client(namespace=api.keys.namespace, connection=api.redis), entry)
    return view.done("enqueue", 1)

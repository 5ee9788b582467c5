"""Pushing jobs into Redis in Sidekiq's format; any Python app can use it without the worker side.

A push is one round trip (kiq.connection.send): SADD ``queues`` and
one LPUSH per queue (or ZADD ``schedule`` plus a wake-up PUBLISH for the
scheduler). Producers LPUSH and consumers take from the right, so each queue
is FIFO.

With shards (kiq.shards) each job goes to the Redis of its queue's shard, a scheduled
one to that shard's ``schedule``: one connection pool per shard, and one round trip per
shard a bulk push touches.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import redis

from kiq import activejob, middleware
from kiq.connection import connect, is_cluster, send, url_from_env
from kiq.errors import shown
from kiq.keys import Keys
from kiq.payload import check_format, dump, new_jid, new_jids, stamp
from kiq.retry import MAX_DELAY
from kiq.serialize import SerializationError, each_list, serialize_args, serialize_kwargs
from kiq.shards import Shards

if TYPE_CHECKING:
    from kiq.job import Job


@dataclass(frozen=True)
class Enqueued:
    """What ``perform_later`` returns: the job id and where the job went. ``job_class`` is the
    job's name, also for an Active Job, whose payload's ``class`` is Rails' wrapper.
    ``successfully_enqueued`` is False when an enqueue callback halted it (Active Job's
    ``successfully_enqueued?``): nothing was enqueued."""

    jid: str
    job_class: str
    queue: str
    at: float | None = None
    successfully_enqueued: bool = True

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Enqueued:
        wrapped = payload.get("wrapped")
        name = wrapped if isinstance(wrapped, str) and wrapped else payload["class"]
        return cls(payload["jid"], name, payload["queue"], payload.get("at"))


NOT_UNICODE = ("holds a string that is not valid Unicode (a lone surrogate such as '\\udcff', as "
               "os.fsdecode gives for bytes that are not UTF-8): Ruby's JSON cannot write it back, so "
               "Sidekiq would lose the job; pass bytes, or decode with errors='replace'")


def _compact(value: Any) -> str:
    """JSON as Sidekiq writes it (kiq.payload.dump); a job holding a string that is not valid
    Unicode is refused (SerializationError) before anything is sent."""
    try:
        return dump(value, strict=True)
    except UnicodeEncodeError:
        raise SerializationError(f"the job {NOT_UNICODE}") from None


def due_at(option: str, given: object, at: float, now: float) -> float:
    """``at``, the epoch seconds ``given`` as ``option`` makes, or ValueError for a time no
    adapter could keep: not finite (a job at inf never runs, one at NaN at once) or more than a
    century ahead."""
    if not math.isfinite(at) or at - now > MAX_DELAY:
        raise ValueError(f"{option}={shown(given)} is no time a job can wait for: at most a century from now")
    return at


def seconds(value: float) -> float:
    """``value`` as a float; an int too large for one is infinite (``due_at`` refuses it)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def build_payload(
    job_class: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    retry: bool | int = True,
    at: float | None = None,
    jid: str | None = None,
    sidekiq_format: int | None = None,
) -> dict[str, Any]:
    """A Sidekiq job hash. Keyword arguments go in kiq's own ``kwargs`` field so
    that ``args`` stays what a Sidekiq reader expects. Its times are in the format of
    ``sidekiq_format`` (kiq.payload.stamp; the process's own when None); ``at``, which
    becomes the schedule's score, stays in seconds."""
    now = time.time()
    created = stamp(now, sidekiq_format)
    payload: dict[str, Any] = {
        "retry": retry,
        "queue": queue,
        "class": job_class,
        "args": serialize_args(args),
        "jid": jid or new_jid(),
        "created_at": created,
    }
    if kwargs:
        payload["kwargs"] = serialize_kwargs(kwargs)
    if at is not None:
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise TypeError(f"at is epoch seconds, not {at!r}")
        at = due_at("at", at, seconds(at), now)
    if at is not None and at > now:
        payload["at"] = at
    else:
        payload["enqueued_at"] = created
    return payload


class Client:
    """Enqueues jobs; safe to share between threads (redis-py pools connections)."""

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        connection: redis.Redis | None = None,
        sidekiq_format: int | None = None,
        shards: Shards | Mapping[str, Any] | None = None,
    ) -> None:
        """``sidekiq_format`` (6, 7 or 8) is the Sidekiq job format this client writes; None
        means the process's (kiq.payload.writing_format: ``KIQ_SIDEKIQ_FORMAT``, else 6).

        ``shards`` (a ``kiq.shards.Shards``, or the config file's ``shards`` mapping) routes
        each job to its queue's shard; ``redis_url`` and ``connection`` are then the first
        (default) shard's. A Redis Cluster's URL (``redis+cluster://``) routes each job to its
        queue's shard on the cluster, under the queue's hash tag (kiq.shards)."""
        self.routes = Shards.parse(shards) if shards else None
        self.redis_url = self.routes.default.url if self.routes else redis_url or url_from_env()
        self.sidekiq_format = None if sidekiq_format is None else check_format(sidekiq_format)
        self.keys = Keys.using(namespace)
        if self.routes is None and is_cluster(self.redis_url):
            self.routes = Shards.single(self.redis_url, self.keys.namespace)
        self.redis = connection or connect(self.redis_url, name="kiq-client", retry=True)
        self.shard_redis: dict[str, redis.Redis] = {}  # by shard URL, when there are several or a cluster
        if self.routes and self.routes.sharded:
            self.shard_redis = {self.redis_url: self.redis}
            for shard in self.routes:
                if shard.url not in self.shard_redis:
                    self.shard_redis[shard.url] = connect(shard.url, name="kiq-client", retry=True)

    def connection_for(self, queue: str) -> redis.Redis:
        """The Redis that holds ``queue``: its shard's, or the one Redis."""
        if not self.shard_redis:
            return self.redis
        return self.shard_redis[self.routes.route(queue).url]  # type: ignore[union-attr]

    def keys_for(self, queue: str) -> Keys:
        """The key names of ``queue``'s shard: its own on a Redis Cluster, else the client's."""
        if self.routes is None or self.routes.cluster is None:
            return self.keys
        return self.routes.route(queue).keys(self.keys.namespace)

    def enqueue(
        self,
        job: type[Job] | str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        retry: bool | int | None = None,
        at: float | None = None,
        backtrace: bool | int | None = None,
        jid: str | None = None,
    ) -> Enqueued:
        """Enqueue a job class, or a job by its wire name (a Ruby class, say); ``jid`` is the
        job's id, made here when not given."""
        payload = payload_for(job, args, kwargs, queue, retry, at, jid, backtrace=backtrace,
                              sidekiq_format=self.sidekiq_format)
        self.push_bulk([payload])
        return Enqueued.of(payload)

    def enqueue_bulk(
        self,
        job: type[Job] | str,
        args_list: Iterable[Sequence[Any]],
        *,
        queue: str | None = None,
        retry: bool | int | None = None,
        at: float | None = None,
        backtrace: bool | int | None = None,
        batch_size: int = 1000,
    ) -> list[str]:
        """Enqueue one job per argument list, ``batch_size`` jobs per round trip.

        Every argument is serialized before the first push, so an argument that
        cannot be serialized fails the call with nothing enqueued.
        """
        check_batch_size(batch_size)
        args_list = list(args_list)
        jids = new_jids(len(args_list))
        if middleware.enqueue_hooks() or (not isinstance(job, str) and job.active_job):
            # each job's own hash: for the middleware's hooks, or to nest Active Job's job_id and args
            payloads = each_list(args_list, lambda n, args: payload_for(
                job, args, None, queue, retry, at, jids[n], backtrace, self.sidekiq_format))
            for start in range(0, len(payloads), batch_size):
                self.push_bulk(payloads[start : start + batch_size])
            return jids
        shared = payload_for(job, (), None, queue, retry, at, backtrace=backtrace,
                             sidekiq_format=self.sidekiq_format)
        encoded = _encode_alike(shared, each_list(args_list, lambda _, args: serialize_args(args)), jids)
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            conn, keys = self.connection_for(shared["queue"]), self.keys_for(shared["queue"])
            if "at" in shared:
                self._send({}, dict.fromkeys(batch, float(shared["at"])), conn, keys)
            else:
                self._send({shared["queue"]: batch}, {}, conn, keys)
        return jids

    def push(self, payload: Mapping[str, Any]) -> str:
        """Push one ready-made job hash (it must have ``class``, ``args``, ``queue``, ``jid``)."""
        return self.push_bulk([payload])[0]

    def push_bulk(self, payloads: Sequence[Mapping[str, Any]]) -> list[str]:
        """Push job hashes in one round trip; jobs with ``at`` go to the schedule.

        A scheduled entry is stored without ``at``, as Sidekiq stores it: the score says
        when. Sidekiq pushes an entry it takes from the schedule (its scheduler, its API's
        and Web UI's "add to queue") through its client, which files a job that still has
        ``at`` back in the schedule instead of its queue.
        """
        if not middleware.enqueue_hooks():
            self._push(payloads)
            return [payload["jid"] for payload in payloads]
        hooked = [dict(payload) for payload in payloads]  # copies: the hooks change these, not the caller's
        middleware.enqueue(hooked, partial(self._push, hooked))
        return [payload["jid"] for payload in hooked]

    def _push(self, payloads: Sequence[Mapping[str, Any]]) -> None:
        """Encode and send, one round trip per shard; a scheduled entry without its ``at``."""
        if not self.shard_redis:
            self._push_to(self.redis, payloads, self.keys)
            return
        by_shard: dict[str, list[Mapping[str, Any]]] = {}
        for payload in payloads:
            by_shard.setdefault(self.routes.route(payload["queue"]).name, []).append(payload)  # type: ignore[union-attr]
        for group in by_shard.values():
            queue = group[0]["queue"]
            self._push_to(self.connection_for(queue), group, self.keys_for(queue))

    def _push_to(self, conn: redis.Redis, payloads: Sequence[Mapping[str, Any]], keys: Keys) -> None:
        """Encode and send to one Redis (one shard, under its ``keys``)."""
        by_queue: dict[str, list[str]] = {}
        scheduled: dict[str, float] = {}
        for payload in payloads:
            if "at" in payload:
                stored = {key: value for key, value in payload.items() if key != "at"}
                scheduled[_compact(stored)] = float(payload["at"])
            else:
                by_queue.setdefault(payload["queue"], []).append(_compact(payload))
        self._send(by_queue, scheduled, conn, keys)

    def _send(self, by_queue: Mapping[str, list[str]], scheduled: Mapping[str, float],
              conn: redis.Redis, keys: Keys) -> None:
        """One round trip: encoded jobs onto their queues, encoded entries into the schedule."""
        commands: list[tuple[Any, ...]] = []
        if by_queue:  # the listing in queues first, best effort (kiq.connection.send)
            commands.append(("SADD", keys.queues, *by_queue))
            for queue, encoded_jobs in by_queue.items():
                commands.append(("LPUSH", keys.queue(queue), *encoded_jobs))
        if scheduled:
            commands.append(("ZADD", keys.schedule,
                             *(item for entry, at in scheduled.items() for item in (at, entry))))
            commands.append(("PUBLISH", keys.schedule_channel, str(min(scheduled.values()))))
        send(conn, commands, again=True, best_effort=(0,) if by_queue else ())


def _encode_alike(shared: Mapping[str, Any], args_lists: Sequence[list[Any]],
                  jids: Sequence[str]) -> list[str]:
    """The JSON of jobs that differ only in ``args`` and ``jid`` (hex digits), the fields they
    share encoded once: encoding each whole payload was half of a bulk enqueue's time.
    Scheduled entries are stored without ``at``, as ``push_bulk`` stores them."""
    rest = _compact({key: value for key, value in shared.items() if key not in ("args", "jid", "at")})
    tail = "," + rest[1:]
    pairs = zip(args_lists, jids, strict=True)
    return [f'{{"args":{_compact(args)},"jid":"{jid}"{tail}' for args, jid in pairs]


def payload_for(
    job: type[Job] | str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    queue: str | None,
    retry: bool | int | None,
    at: float | None,
    jid: str | None = None,
    backtrace: bool | int | None = None,
    sidekiq_format: int | None = None,
) -> dict[str, Any]:
    """The job hash for one job; options left None come from the job class (or Sidekiq's defaults
    for a wire name). Sidekiq's ``backtrace`` option is written only when it asks for one."""
    if isinstance(job, str):
        retry = True if retry is None else retry
        payload = build_payload(job, args, kwargs, queue=queue or "default", retry=retry, at=at, jid=jid,
                                sidekiq_format=sidekiq_format)
    else:
        queue, retry = queue or job.queue, job.retry if retry is None else retry
        if job.active_job:
            payload = activejob.wrap(job.job_name, args, kwargs, queue=queue, jid=jid or new_jid(), at=at,
                                     retry=retry, sidekiq_format=sidekiq_format)
        else:
            payload = build_payload(job.job_name, args, kwargs, queue=queue, retry=retry, at=at, jid=jid,
                                    sidekiq_format=sidekiq_format)
        backtrace = job.backtrace if backtrace is None else backtrace
    check_options(payload)
    if backtrace:
        payload["backtrace"] = backtrace
    return payload


def check_options(payload: Mapping[str, Any]) -> None:
    """Refuse, in the caller, a class name, queue or retry setting that no worker could follow
    (kiq's or Sidekiq's: a queue named ``5``, ``retry="yes"``)."""
    name, queue, retry = payload["class"], payload["queue"], payload["retry"]
    if not isinstance(name, str) or not name:
        raise TypeError(f"a job's class name is a non-empty string, not {name!r}")
    if not isinstance(queue, str) or not queue:
        raise TypeError(f"queue is a non-empty string, not {queue!r}")
    if not (isinstance(retry, bool) or (type(retry) is int and retry >= 0)):
        raise TypeError(f"retry is True, False or a number of retries (0 or more), not {retry!r}")


def check_batch_size(batch_size: object) -> None:
    """Refuse a batch size that would push nothing (a negative one made no batch at all)."""
    if type(batch_size) is not int or batch_size < 1:
        raise TypeError(f"batch_size is a whole number of jobs, 1 or more, not {batch_size!r}")


_default: Client | None = None
_default_lock = threading.Lock()


def set_default(client: Client) -> Client:
    """Make ``client`` the one ``perform_later`` enqueues through (kiq.adapters.configure)."""
    global _default
    with _default_lock:
        _default = client
    return client


def default_client() -> Client:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Client()
    return _default

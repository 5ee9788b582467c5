"""Where ``perform_later`` sends a job: Redis in production, or in-process for development and tests.

- ``redis``: pushes to Redis for ``kiq start`` workers (the default).
- ``async``: runs jobs on a thread pool in this process; honours ``wait`` and
  ``wait_until``, and retries failures in-process by the job's own policy.
- ``inline``: runs the job at once, in the caller; its errors reach the caller.
- ``test``: records jobs and runs nothing until asked (see kiq.testing).

Every adapter builds the same Sidekiq payload first, so an argument that
cannot be serialized fails in the caller whichever adapter is in use, and jobs
run from a deserialized payload exactly as a worker would run them.

Choose with ``kiq.configure(adapter="async")`` or ``KIQ_ADAPTER``.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from kiq import log, middleware
from kiq.client import Client, Enqueued, default_client, payload_for, set_default
from kiq.processor import execute, handle
from kiq.registry import lookup
from kiq.serialize import each_list

if TYPE_CHECKING:
    from kiq.job import Job
from kiq.payload import job_name

NAMES = ("redis", "async", "inline", "test")


class Adapter(Protocol):
    def enqueue(self, job: type[Job] | str, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
                *, queue: str | None = None, retry: bool | int | None = None,
                at: float | None = None, backtrace: bool | int | None = None,
                jid: str | None = None) -> Enqueued: ...

    def enqueue_bulk(self, job: type[Job] | str, args_list: Iterable[Sequence[Any]], *,
                     queue: str | None = None, retry: bool | int | None = None, at: float | None = None,
                     backtrace: bool | int | None = None, batch_size: int = 1000) -> list[str]: ...


class RedisAdapter:
    """Enqueues through the default client (``kiq.configure``, ``KIQ_REDIS_URL``...)."""

    def enqueue(self, job: type[Job] | str, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
                *, queue: str | None = None, retry: bool | int | None = None,
                at: float | None = None, backtrace: bool | int | None = None,
                jid: str | None = None) -> Enqueued:
        return default_client().enqueue(job, args, kwargs, queue=queue, retry=retry, at=at,
                                        backtrace=backtrace, jid=jid)

    def enqueue_bulk(self, job: type[Job] | str, args_list: Iterable[Sequence[Any]], *,
                     queue: str | None = None, retry: bool | int | None = None, at: float | None = None,
                     backtrace: bool | int | None = None, batch_size: int = 1000) -> list[str]:
        return default_client().enqueue_bulk(job, args_list, queue=queue, retry=retry, at=at,
                                              backtrace=backtrace, batch_size=batch_size)


class LocalAdapter:
    """Shared by the in-process adapters: payloads are built and read back as a worker would."""

    def enqueue(self, job: type[Job] | str, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
                *, queue: str | None = None, retry: bool | int | None = None,
                at: float | None = None, backtrace: bool | int | None = None,
                jid: str | None = None) -> Enqueued:
        payload = payload_for(job, args, kwargs, queue, retry, at, jid, backtrace=backtrace)
        self._accept_all([payload])
        return Enqueued.of(payload)

    def enqueue_bulk(self, job: type[Job] | str, args_list: Iterable[Sequence[Any]], *,
                     queue: str | None = None, retry: bool | int | None = None, at: float | None = None,
                     backtrace: bool | int | None = None, batch_size: int = 1000) -> list[str]:
        payloads = each_list(list(args_list), lambda _, args: payload_for(job, args, None, queue, retry, at,
                                                                        backtrace=backtrace))
        self._accept_all(payloads)
        return [payload["jid"] for payload in payloads]

    def _accept_all(self, payloads: list[dict[str, Any]]) -> None:
        """Take jobs as a push would: through the middleware's enqueue hooks, as JSON."""
        middleware.enqueue(payloads, partial(self._accept_each, payloads))

    def _accept_each(self, payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            self.accept(_round_trip(payload))

    def accept(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError


class InlineAdapter(LocalAdapter):
    """Runs each job as soon as it is enqueued (``wait`` is ignored); errors reach the caller."""

    def accept(self, payload: dict[str, Any]) -> None:
        execute(_job_class(payload), payload)


MAX_WAIT = 3600.0  # seconds the async adapter's timer sleeps at most before it looks again


class AsyncAdapter(LocalAdapter):
    """A thread pool in this process, for development: no Redis, no worker to start."""

    def __init__(self, threads: int = 5) -> None:
        log.setup_unless_configured()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kiq-async")
        self.due: list[tuple[float, int, dict[str, Any]]] = []
        self.order = itertools.count()
        self.wake = threading.Condition()
        self.dead: list[dict[str, Any]] = []
        self.running = 0
        self.finished = threading.Condition()
        threading.Thread(target=self._timer, name="kiq-async-timer", daemon=True).start()
        atexit.register(self._say_unrun)

    def _say_unrun(self) -> None:
        """At the process's exit: the jobs still waiting for their time (scheduled, or retries)
        die with the process, as an in-process adapter's must; said, not silent."""
        with self.wake:
            waiting = len(self.due)
        if waiting:
            log.get("kiq.async").warning("the process exits with jobs the async adapter had not run yet "
                                         "(scheduled or retries): they are lost; use the Redis adapter "
                                         "to keep them", jobs=waiting)

    def accept(self, payload: dict[str, Any]) -> None:
        at = payload.get("at")
        if at is None or at <= time.time():
            self._submit(payload)
            return
        with self.wake:
            heapq.heappush(self.due, (float(at), next(self.order), payload))
            self.wake.notify()

    def _timer(self) -> None:
        while True:
            with self.wake:
                while not self.due or self.due[0][0] > time.time():
                    # capped: it looks again at least hourly (a clock set forward meanwhile)
                    self.wake.wait(min(self.due[0][0] - time.time(), MAX_WAIT) if self.due else None)
                _, _, payload = heapq.heappop(self.due)
            payload.pop("at", None)
            self._submit(payload)

    def _submit(self, payload: dict[str, Any]) -> None:
        with self.finished:
            self.running += 1
        self.pool.submit(self._perform, payload)

    def _perform(self, payload: dict[str, Any]) -> None:
        try:
            outcome = handle(_job_class(payload), payload, payload["queue"])
            if outcome.action == "retry":
                again = json.loads(outcome.payload)
                again["at"] = outcome.score
                self.accept(again)
            elif outcome.action == "dead":
                self.dead.append(json.loads(outcome.payload))
        finally:
            with self.finished:
                self.running -= 1
                self.finished.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no job is running or waiting to run now (jobs due later are not waited for)."""
        with self.finished:
            return self.finished.wait_for(lambda: self.running == 0, timeout)


class TestAdapter(LocalAdapter):
    """Records jobs; kiq.testing performs them on request."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.enqueued: list[dict[str, Any]] = []
        self.performed: list[dict[str, Any]] = []
        self.perform_on_enqueue = False

    def accept(self, payload: dict[str, Any]) -> None:
        self.enqueued.append(payload)
        if self.perform_on_enqueue:
            self.perform(payload)

    def perform(self, payload: dict[str, Any]) -> None:
        execute(_job_class(payload), payload)
        self.performed.append(payload)


def _round_trip(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as a worker would read it from Redis."""
    return dict(json.loads(json.dumps(payload)))


def _job_class(payload: dict[str, Any]) -> type[Job]:
    name = job_name(payload)
    job_class = lookup(name)
    if job_class is None:
        raise LookupError(f"no job class registered as {name!r}")
    return job_class


_current: Adapter | None = None
_lock = threading.Lock()


def create(name: str) -> Adapter:
    adapters: dict[str, type] = {"redis": RedisAdapter, "async": AsyncAdapter, "inline": InlineAdapter,
                                 "test": TestAdapter}
    if name not in adapters:
        raise ValueError(f"unknown adapter {name!r}: use one of {', '.join(NAMES)}")
    adapter: Adapter = adapters[name]()
    return adapter


def use(adapter: Adapter | str) -> Adapter:
    """Make ``adapter`` (or a new one of that name) the one ``perform_later`` uses; returns it."""
    global _current
    with _lock:
        _current = create(adapter) if isinstance(adapter, str) else adapter
        return _current


def current() -> Adapter:
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = create(os.environ.get("KIQ_ADAPTER") or "redis")
    return _current


def configure(redis_url: str | None = None, namespace: str | None = None,
              adapter: str | None = None, sidekiq_format: int | None = None,
              shards: Mapping[str, Any] | None = None) -> Client:
    """Set where ``perform_later`` enqueues (otherwise ``KIQ_REDIS_URL``, ``REDIS_URL``, local),
    and, with ``adapter``, how ("redis", "async", "inline" or "test"; otherwise ``KIQ_ADAPTER``);
    ``sidekiq_format`` is the Sidekiq job format it writes (otherwise ``KIQ_SIDEKIQ_FORMAT``, else 6);
    ``shards`` (the config file's ``shards`` mapping, or a ``kiq.shards.Shards``) sends each job to
    its queue's shard instead of the one Redis."""
    client = set_default(Client(redis_url, namespace, sidekiq_format=sidekiq_format, shards=shards))
    if adapter is not None:
        use(adapter)
    return client

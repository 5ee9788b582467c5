"""Middleware: code that runs around every enqueue and every job, whatever its class.

Active Job's callbacks belong to one job class; middleware belongs to the app, as Sidekiq's
client and server chains and Dramatiq's middleware do: a tenant carried from the enqueuing
request to the job, tracing, a database session closed after each job. Subclass ``Middleware``,
override the hooks you need, and ``add`` an instance in a module that both sides import (the
workers import their ``require`` modules before they fork)::

    class Tenant(kiq.middleware.Middleware):
        def before_enqueue(self, payload):
            payload["tenant"] = current_tenant()

        def around_perform(self, job, call):
            with tenant(job.payload.get("tenant")):
                return call()

    kiq.middleware.add(Tenant())

- ``before_enqueue`` hooks run in the order added, on each job hash before it is pushed,
  with every adapter (a bulk enqueue calls them once per job). They may change the hash; an
  error raised there fails the enqueue in the caller, and nothing of that call is pushed.
- ``around_push`` hooks nest, the first added outermost, around the push itself, once per
  push with every job hash it sends (one job, or a batch of a bulk enqueue), after the
  ``before_enqueue`` hooks: each must call ``call()``, which raises what the push raised.
- ``after_enqueue`` hooks run in the reverse order once the jobs are pushed.
- ``around_perform`` hooks nest, the first added outermost, around the job's ``perform`` and
  its callbacks: in the worker, and in the inline, async and test adapters. Each must call
  ``call()`` and return its result; an error raised in one fails the job as ``perform`` would.

Periodic ticks, and jobs the scheduler moves from the schedule or retry sets, are not enqueues
by the app: no enqueue hooks run for them. With no middleware added by the app, none of its
hooks costs anything.

kiq's own per-job concerns are members of the server chain too, ahead of every one the app
adds (``add_builtin``; ``builtins()`` lists them): ``kiq.processor.JobLog`` (the job's log
fields) in every process that runs jobs from their payload, then ``kiq.worker.JobMetrics``
(its Prometheus counts) in a worker, as Sidekiq 7 records its metrics in a server middleware.
They wrap more than the app's members do: the job's arguments being loaded, the app's
members, ``perform``, and kiq's retry decision. So their ``call()`` never raises for what the
job raised; it returns the job's ``kiq.retry.Outcome`` (failed or not, retried, dead): a
member that counts jobs needs the outcome, which only exists once kiq has decided it (a
server middleware in Sidekiq sees the error, and Sidekiq counts retries elsewhere). The
inline and test adapters, which raise a job's error to the caller, run only the app's members.
A member of kiq's may have enqueue hooks too (``kiq.otel``'s tracing member wraps each push):
they run ahead of the app's, the outermost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiq.job import Job


class Middleware:
    """No-op hooks, to override."""

    def before_enqueue(self, payload: dict[str, Any]) -> None:
        """Called with each job hash about to be pushed; may change it."""

    def around_push(self, payloads: Sequence[dict[str, Any]], call: Callable[[], None]) -> None:
        """Wraps one push of ``payloads`` (their ``before_enqueue`` hooks have run): call ``call()``."""
        call()

    def after_enqueue(self, payload: dict[str, Any]) -> None:
        """Called with each job hash once it is pushed."""

    def around_perform(self, job: Job, call: Callable[[], Any]) -> Any:
        """Wraps the job's run: call ``call()`` and return its result."""
        return call()


Around = Callable[["Job", Callable[[], Any]], Any]


def _call(job: Job, call: Callable[[], Any]) -> Any:
    return call()


_installed: list[Middleware] = []
_enqueue: list[Middleware] = []  # those that override before or after_enqueue, so that others cost nothing
_push: list[Middleware] = []  # those that override around_push
_perform: list[Middleware] = []
_builtin: list[Middleware] = []  # kiq's own members, ahead of the app's
_serve_first: Around = _call  # the first one's around_perform, called without a partial
_serve: list[Around] = []  # the around_perform of each of the others, innermost first


def add(middleware: Middleware) -> None:
    """Append ``middleware`` to the chain (the same instance twice is an error)."""
    _check(middleware)
    _installed.append(middleware)
    _sort()


def add_builtin(middleware: Middleware) -> None:
    """Append one of kiq's own members to the head of the server chain: after kiq's earlier
    ones, ahead of every member the app adds, whenever the app adds it."""
    _check(middleware)
    _builtin.append(middleware)
    _sort()


def remove(middleware: Middleware) -> None:
    """Take ``middleware`` out of the chain, an app's member or one of kiq's own."""
    (_builtin if middleware in _builtin else _installed).remove(middleware)
    _sort()


def clear() -> None:
    """Take out every member the app added (kiq's own stay)."""
    _installed.clear()
    _sort()


def installed() -> list[Middleware]:
    """The members the app added, in order."""
    return list(_installed)


def builtins() -> list[Middleware]:
    """kiq's own members of the server chain, in order (the first outermost)."""
    return list(_builtin)


def _check(middleware: Middleware) -> None:
    if not isinstance(middleware, Middleware):
        raise TypeError(f"{middleware!r} is not a kiq.middleware.Middleware")
    if middleware in _installed or middleware in _builtin:
        raise ValueError(f"{middleware!r} is already added")


def _sort() -> None:
    def overrides(middleware: Middleware, *hooks: str) -> bool:
        return any(getattr(type(middleware), hook) is not getattr(Middleware, hook) for hook in hooks)

    _enqueue[:] = [m for m in (*_builtin, *_installed) if overrides(m, "before_enqueue", "after_enqueue")]
    _push[:] = [m for m in (*_builtin, *_installed) if overrides(m, "around_push")]
    _perform[:] = [m for m in _installed if overrides(m, "around_perform")]
    global _serve_first
    _serve[:] = [m.around_perform for m in reversed(_builtin[1:])]
    _serve_first = _builtin[0].around_perform if _builtin else _call


def enqueue_hooks() -> bool:
    """Whether any middleware has an enqueue hook (a bulk enqueue then builds each job's hash)."""
    return bool(_enqueue or _push)


def enqueue(payloads: Sequence[dict[str, Any]], push: Callable[[], None]) -> None:
    """``push()`` the job hashes through every enqueue hook: ``before_enqueue`` on each, then
    ``push`` inside the ``around_push`` hooks, then ``after_enqueue`` on each. An error raised
    anywhere fails the enqueue in the caller; none after a failed push."""
    for middleware in _enqueue:
        for payload in payloads:
            middleware.before_enqueue(payload)
    call = push
    for middleware in reversed(_push):
        call = _wrap_push(middleware, payloads, call)
    call()
    for middleware in reversed(_enqueue):
        for payload in payloads:
            middleware.after_enqueue(payload)


def _wrap_push(middleware: Middleware, payloads: Sequence[dict[str, Any]],
               inner: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        called = []

        def proceed() -> None:
            called.append(True)
            inner()

        middleware.around_push(payloads, proceed)
        if not called:
            raise RuntimeError(f"{type(middleware).__name__}.around_push did not call call()")

    return call


def serve(job: Job, attempt: Callable[[Job], Any]) -> Any:
    """``attempt(job)`` (the job, the app's members inside it, and its outcome) inside kiq's
    own members.

    The ``call`` each member gets is a ``partial``, built here once per job: no closure, and
    no check that a member called it, since these are kiq's own."""
    call = partial(attempt, job)
    for around in _serve:
        call = partial(around, job, call)
    return _serve_first(job, call)


def perform(job: Job, call: Callable[[], Any]) -> Any:
    """Run ``call`` (the job's run) inside every ``around_perform`` hook the app added."""
    if not _perform:
        return call()
    for middleware in reversed(_perform):
        call = _wrap(middleware, job, call)
    return call()


def _wrap(middleware: Middleware, job: Job, inner: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        called = []

        def proceed() -> Any:
            called.append(True)
            return inner()

        result = middleware.around_perform(job, proceed)
        if not called:
            raise RuntimeError(f"{type(middleware).__name__}.around_perform did not call call()")
        return result

    return call

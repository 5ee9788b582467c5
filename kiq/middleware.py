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
- ``after_enqueue`` hooks run in the reverse order once the jobs are pushed.
- ``around_perform`` hooks nest, the first added outermost, around the job's ``perform`` and
  its callbacks: in the worker, and in the inline, async and test adapters. Each must call
  ``call()`` and return its result; an error raised in one fails the job as ``perform`` would.

Periodic ticks, and jobs the scheduler moves from the schedule or retry sets, are not enqueues
by the app: no enqueue hooks run for them. With no middleware added, nothing here runs at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiq.job import Job


class Middleware:
    """No-op hooks, to override."""

    def before_enqueue(self, payload: dict[str, Any]) -> None:
        """Called with each job hash about to be pushed; may change it."""

    def after_enqueue(self, payload: dict[str, Any]) -> None:
        """Called with each job hash once it is pushed."""

    def around_perform(self, job: Job, call: Callable[[], Any]) -> Any:
        """Wraps the job's run: call ``call()`` and return its result."""
        return call()


_installed: list[Middleware] = []
_enqueue: list[Middleware] = []  # those that override an enqueue hook, so that others cost nothing
_perform: list[Middleware] = []


def add(middleware: Middleware) -> None:
    """Append ``middleware`` to the chain (the same instance twice is an error)."""
    if not isinstance(middleware, Middleware):
        raise TypeError(f"{middleware!r} is not a kiq.middleware.Middleware")
    if middleware in _installed:
        raise ValueError(f"{middleware!r} is already added")
    _installed.append(middleware)
    _sort()


def remove(middleware: Middleware) -> None:
    _installed.remove(middleware)
    _sort()


def clear() -> None:
    _installed.clear()
    _sort()


def installed() -> list[Middleware]:
    return list(_installed)


def _sort() -> None:
    def overrides(middleware: Middleware, *hooks: str) -> bool:
        return any(getattr(type(middleware), hook) is not getattr(Middleware, hook) for hook in hooks)

    _enqueue[:] = [m for m in _installed if overrides(m, "before_enqueue", "after_enqueue")]
    _perform[:] = [m for m in _installed if overrides(m, "around_perform")]


def enqueue_hooks() -> bool:
    """Whether any middleware has an enqueue hook (a bulk enqueue then builds each job's hash)."""
    return bool(_enqueue)


def before_enqueue(payloads: Sequence[dict[str, Any]]) -> None:
    for middleware in _enqueue:
        for payload in payloads:
            middleware.before_enqueue(payload)


def after_enqueue(payloads: Sequence[dict[str, Any]]) -> None:
    for middleware in reversed(_enqueue):
        for payload in payloads:
            middleware.after_enqueue(payload)


def perform(job: Job, call: Callable[[], Any]) -> Any:
    """Run ``call`` (the job's run) inside every ``around_perform`` hook."""
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

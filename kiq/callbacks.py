"""Active Job's callbacks and error policy for kiq jobs.

Callbacks are methods marked with a decorator; a subclass inherits its
parents' callbacks, which come before its own. They chain in the order they
were defined, as Active Support chains them (``around``): ``before_*``
callbacks run in that order, ``around_*`` ones nest with the first defined
outermost, and ``after_*`` ones run in reverse order, so the last set up is
the first torn down; one defined after an ``around_*`` runs inside it. An
``around_*`` callback receives ``block`` and calls it to go on; one that does
not, or a ``before_*`` one that raises ``Abort``, halts the chain.
``after_discard`` callbacks get the error of a job that will not run again
(Active Job's, and Sidekiq's ``sidekiq_retries_exhausted``).

``retry_on`` and ``discard_on`` are class decorators. They decide what a
failure means before kiq's own retry policy (the job's ``retry``) does:
``discard_on`` drops the job, ``retry_on`` puts it in the retry set after its
own wait until it has failed ``attempts`` times with those errors; after that
the failure falls through to the job's ``retry`` policy, as Active Job leaves
it to the queueing backend. Of the rules that match, the one written last
decides (``decide``).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type)
Wait = float | dt.timedelta | str | Callable[[int], float]

PHASES = ("enqueue", "perform", "discard")
Chain = list[tuple[str, str]]  # a phase's callbacks: (before/around/after, method name), as defined
MARK = "_kiq_callback"


def _marker(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        setattr(method, MARK, kind)
        return method

    mark.__name__ = kind
    mark.__doc__ = f"Mark a job method as a {kind.replace('_', ' ')} callback."
    return mark


before_enqueue = _marker("before_enqueue")
around_enqueue = _marker("around_enqueue")
after_enqueue = _marker("after_enqueue")
before_perform = _marker("before_perform")
around_perform = _marker("around_perform")
after_perform = _marker("after_perform")
after_discard = _marker("after_discard")
after_discard.__doc__ = ("Mark a job method as called with the error when the job will not run again: "
                         "discarded by discard_on, dropped (retry = False), or sent to the dead set.")


def collect(cls: type) -> dict[str, Chain]:
    """``cls``'s callbacks per phase, in the order they were defined, parents' first; an
    override keeps its place."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for name, attribute in vars(klass).items():
            kind = getattr(attribute, MARK, None)
            if kind is not None:
                found[name] = kind
            elif name in found:
                del found[name]  # overridden by a plain method: no longer a callback
    chains: dict[str, Chain] = {phase: [] for phase in PHASES}
    for name, kind in found.items():
        when, _, phase = kind.partition("_")
        chains[phase].append((when, name))
    return chains


def around(instance: Any, phase: str, body: Callable[[], T]) -> T:
    """Call ``body`` inside ``instance``'s callbacks for ``phase`` ("enqueue" or "perform"), as
    Active Support chains them: each callback wraps those defined after it, so a ``before``
    runs, then the rest; an ``after`` runs once the rest has returned (not if it raised); an
    ``around`` calls the rest as its block. Defined in the order before, around, after, they
    run as their names say; an ``after`` defined after an ``around`` runs inside it."""
    chain: Chain = type(instance)._kiq_callbacks[phase]
    call: Callable[[], Any] = body
    for when, name in reversed(chain):
        call = _link(when, getattr(instance, name), call)
    return call()  # type: ignore[no-any-return]


def _link(when: str, callback: Callable[..., Any], inner: Callable[[], T]) -> Callable[[], T]:
    if when == "around":
        return _wrap(callback, inner)
    if when == "before":
        def before() -> T:
            callback()
            return inner()

        return before

    def after() -> T:
        result = inner()
        callback()
        return result

    return after


class Abort(Exception):
    """Raised by a ``before_*`` or ``around_*`` callback to halt its chain, as Rails' ``throw
    :abort``: the job is not enqueued (``perform_later`` returns an ``Enqueued`` whose
    ``successfully_enqueued`` is False), or not performed (it counts as done). An ``around_*``
    callback that returns without calling its block halts the same way."""


def _wrap(callback: Callable[[Callable[[], Any]], Any], inner: Callable[[], T]) -> Callable[[], T]:
    def call() -> T:
        box: list[T] = []
        callback(lambda: box.append(inner()))
        if not box:
            raise Abort(f"around callback {callback.__name__} did not call its block")
        return box[0]

    return call


@dataclass(frozen=True)
class RetryRule:
    errors: tuple[type[BaseException], ...]
    wait: Wait
    attempts: int | None  # None: unlimited
    jitter: float

    def delay(self, executions: int) -> float:
        """Seconds before the next try, after ``executions`` failures with these errors."""
        if callable(self.wait):
            return float(self.wait(executions))
        if self.wait == "polynomially_longer":
            base = float(executions**4)
            return base + random.random() * base * self.jitter + 2
        if isinstance(self.wait, str):
            raise ValueError(f"unknown wait {self.wait!r}: use seconds, a timedelta, a callable "
                             "or 'polynomially_longer'")
        seconds = self.wait.total_seconds() if isinstance(self.wait, dt.timedelta) else float(self.wait)
        return seconds + random.random() * seconds * self.jitter

    @property
    def key(self) -> str:
        """The name Active Job counts these errors' executions under."""
        return "[" + ", ".join(error.__name__ for error in self.errors) + "]"


@dataclass(frozen=True)
class DiscardRule:
    errors: tuple[type[BaseException], ...]


Rule = RetryRule | DiscardRule
RULES = "_kiq_rules"  # a class's own rules, in the order its decorators were applied


def retry_on(*errors: type[BaseException], wait: Wait = 3.0, attempts: int | str = 5,
             jitter: float = 0.15) -> Callable[[C], C]:
    """Retry on ``errors`` after ``wait`` until ``attempts`` runs have failed with them
    (``"unlimited"``: retry for ever).

    ``wait`` is seconds, a timedelta, a callable of the number of failures so
    far, or ``"polynomially_longer"`` (failures**4 + 2 seconds, plus jitter).
    """
    _check_errors("retry_on", errors)
    if attempts != "unlimited" and (type(attempts) is not int or attempts < 1):
        raise ValueError(f"retry_on's attempts is a whole number from 1, or 'unlimited', not {attempts!r}")
    rule = RetryRule(errors, wait, None if attempts == "unlimited" else int(attempts), jitter)
    if isinstance(wait, str):
        rule.delay(1)  # a misspelt wait fails where it is written
    elif not callable(wait):
        seconds = wait.total_seconds() if isinstance(wait, dt.timedelta) else wait
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            raise ValueError(f"retry_on's wait is a number of seconds (0 or more), a timedelta, a callable "
                             f"or 'polynomially_longer', not {wait!r}")
    return _declare(rule)


def discard_on(*errors: type[BaseException]) -> Callable[[C], C]:
    """Drop the job, without retrying, when it fails with one of ``errors``."""
    _check_errors("discard_on", errors)
    return _declare(DiscardRule(errors))


def _check_errors(name: str, errors: tuple[Any, ...]) -> None:
    """Refuse, where the rule is written, what no failure could match: a mistake found only
    when the job fails would retry it where the rule said to drop it."""
    if not errors:
        raise ValueError(f"{name} needs at least one exception class")
    for error in errors:
        if not (isinstance(error, type) and issubclass(error, BaseException)):
            raise TypeError(f"{name} takes exception classes, not {error!r}: import the class and pass it")


def _declare(rule: Rule) -> Callable[[C], C]:
    def decorate(cls: C) -> C:
        setattr(cls, RULES, [*vars(cls).get(RULES, ()), rule])
        return cls

    return decorate


def decide(cls: Any, error: BaseException, payload: dict[str, Any]) -> tuple[str, float]:
    """("discard", 0), ("retry", seconds) or ("default", 0) for a failure of a ``cls`` job.

    The first rule that matches decides, as Active Job searches its handlers: the last written
    first. Decorators apply from the bottom up, so that is a class's lowest decorator first
    (``@retry_on(Exception)`` above ``@retry_on(Timeout)`` reads as Rails' two lines, and a
    Timeout gets its own rule), and a class's own rules before its parents'. Counts the
    failure in the payload's ``exception_executions`` (Active Job's field) when a ``retry_on``
    rule matches.
    """
    for klass in cls.__mro__:
        for rule in vars(klass).get(RULES, ()):
            if isinstance(error, rule.errors):
                return _apply(rule, payload)
    return "default", 0.0


def _apply(rule: Rule, payload: dict[str, Any]) -> tuple[str, float]:
    if isinstance(rule, DiscardRule):
        return "discard", 0.0
    counts = payload.setdefault("exception_executions", {})
    if not isinstance(counts, dict):
        counts = payload["exception_executions"] = {}
    previous = counts.get(rule.key)
    executions = previous + 1 if type(previous) is int and previous >= 0 else 1
    counts[rule.key] = executions
    if rule.attempts is None or executions < rule.attempts:
        return "retry", rule.delay(executions)
    return "default", 0.0

"""Running one job from its payload, and deciding what becomes of it.

Nothing a payload says is trusted: invalid JSON, missing fields and unknown
job classes go to the dead set with the reason, and only classes in the job
registry are ever instantiated.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from kiq import activejob, callbacks, globalid, log, middleware, retry
from kiq.payload import INVALID_CLASS, InvalidPayloadError, decode, job_data, job_name, wrap_invalid
from kiq.registry import lookup
from kiq.retry import Outcome
from kiq.serialize import deserialize_args, deserialize_kwargs

if TYPE_CHECKING:
    from kiq.job import Job

UNKNOWN_CLASS_ERROR = "kiq.UnknownJobError"

logger = log.get("kiq.job")


class JobLog(middleware.Middleware):
    """kiq's first member of the server chain: every line logged while a job runs names it.

    It binds the job's ``jid``, ``queue`` and ``class`` before anything else of the job runs,
    so the lines of the app's middleware, of loading its arguments and of ``perform`` carry
    them, and they stay bound until the thread's next job: the ``fail`` line written after the
    retry decision carries them too. A payload that never becomes a job (unreadable, or
    naming no registered class) is bound by ``prepare`` instead.
    """

    def around_perform(self, job: Job, call: Callable[[], Any]) -> Any:
        log.bind_job({"jid": job.jid, "queue": job.queue_name, "class": job.job_name})
        return call()


middleware.add_builtin(JobLog())


def prepare(queue: str, raw: str) -> tuple[type[Job], dict[str, Any]] | Outcome:
    """The job class and payload to run, or the outcome of a payload that cannot run.

    A payload kiq cannot read goes to the dead set at once. One that names a class no
    required module registered fails like a job that raised (Sidekiq's NameError): retried
    with backoff, since during a rolling deploy, or on a queue shared with Ruby workers, a
    worker that knows the class may soon take it; with the default tries whatever its own
    ``retry`` says (a Ruby job's ``retry: false`` is its class's to apply, not a reason to drop
    it here), then the dead set. Log lines name this payload's jid and class, never the
    previous job's.
    """
    try:
        payload = decode(raw)
    except InvalidPayloadError as error:
        log.bind_job({"queue": queue})
        logger.error("invalid payload", error=str(error))
        return retry.dead(wrap_invalid(queue, raw, str(error)))
    name = job_name(payload)
    job_class = lookup(name)
    if job_class is not None:
        return job_class, payload  # handle() binds the job's log fields
    log.bind_job({"jid": payload["jid"], "queue": queue, "class": name})
    if name == INVALID_CLASS:
        logger.error("invalid payload", error="a wrapped invalid payload was put back in a queue")
        return retry.dead(payload)  # retried from the dead set by hand: back it goes, as it was
    message = f"no job class registered as {name!r}; is its module in the workers' require list?"
    outcome = retry.failure(payload, UNKNOWN_CLASS_ERROR, message, kept=True, queue=queue)
    logger.error("unknown job class", error=message, **_fate(outcome, payload))
    return outcome


def timed_out(payload: dict[str, Any], seconds: float, queue: str, name: str,
              frames: list[str] | None = None) -> Outcome:
    """The outcome of a job that ran past its class's ``timeout``: a failure like any other,
    whose backtrace (when its class keeps one) is where its thread was then, ``frames``.
    Its ``fail`` line is written by the timeout watch's thread: it names the job itself."""
    message = f"job ran longer than its timeout of {seconds:g}s"
    outcome = retry.failure(payload, "kiq.JobTimeout", message, queue=queue, frames=frames)
    fields = {"jid": payload["jid"], "queue": queue, "class": name}
    logger.warning("fail", error=f"kiq.JobTimeout: {message}", **fields, **_fate(outcome, payload))
    return outcome


def handle(job_class: type[Job], payload: dict[str, Any], queue: str) -> Outcome:
    """Run a job taken from ``queue`` through the whole server chain and return the outcome to
    acknowledge: kiq's own members around ``attempt``. A job's failure never raises here."""
    return middleware.serve(_job(job_class, payload, queue), attempt)  # type: ignore[no-any-return]


def attempt(job: Job) -> Outcome:
    """Run the job (the app's middleware inside) and turn what happened into its outcome, with
    the ``done`` or ``fail`` line; the innermost step of the server chain. A job that its
    timeout has failed already gets neither: its failure stands (its worker's JobMetrics says so)."""
    if log.enabled(logging.DEBUG):
        logger.debug("start")
    started = time.perf_counter()
    try:
        perform(job)
    except BaseException as error:  # SystemExit from a job is a failure too, as in Sidekiq
        _end_if_forked()
        if job.timeout and not still_ours():
            return Outcome(failed=True, error=error)
        elapsed = _ms(started)
        outcome = failed(type(job), job.payload, error, job.queue_name)
        logger.warning("fail", elapsed_ms=elapsed, error=describe(error), exc_info=error,
                       **_fate(outcome, job.payload))
        if outcome.action in ("", "dead"):
            discarded(job, error)
        return outcome
    _end_if_forked()
    if log.enabled(logging.INFO) and (not job.timeout or still_ours()):
        logger.info("done", elapsed_ms=_ms(started))
    return retry.SUCCESS


_forked = False  # this process is the child of a fork that a job made (os.fork without exec)


def end_forked_children() -> None:
    """In a worker: the child of a fork that a job makes, back from the job in kiq's code,
    ends there. It holds the one thread a fork keeps, the processor thread of the parent's job:
    it would log and acknowledge that job, take the jobs the parent holds and run them a second
    time, and outlive the stop."""
    os.register_at_fork(after_in_child=_mark_forked)


def _mark_forked() -> None:
    global _forked
    _forked = True


def _end_if_forked() -> None:
    if _forked:
        logger.warning("a job's forked child returned into kiq; it ends here (end it with os._exit)",
                       pid=os.getpid())
        os._exit(0)


def discarded(job: Job, error: BaseException) -> None:
    """Call the job's ``after_discard`` callbacks: it will not run again (discarded, dropped, or
    dead). One that raises is logged; the others still run, and the job's fate stands."""
    for _, name in type(job)._kiq_callbacks["discard"]:
        try:
            getattr(job, name)(error)
        except BaseException:  # the app's own code
            logger.exception("an after_discard callback raised", callback=name)


def _ours() -> bool:
    return True


still_ours: Callable[[], bool] = _ours
"""Asked as a job with a ``timeout`` ends: False if the timeout has failed it already. A worker
sets its own (``Worker._ending``); elsewhere no timeout is watched."""


def execute(job_class: type[Job], payload: dict[str, Any]) -> Any:
    """Rebuild the job from its payload and run it with the app's middleware and its callbacks,
    without kiq's own members (the inline and test adapters); raises what the job raises."""
    return perform(build(job_class, payload))


def build(job_class: type[Job], payload: dict[str, Any]) -> Job:
    """The job of ``payload`` as a local adapter runs it, in the queue its payload names."""
    return _job(job_class, payload, str(payload.get("queue") or job_class.queue))


def perform(job: Job) -> Any:
    """Load the job's arguments and run it inside the app's middleware and its callbacks."""
    payload = job.payload
    with globalid.scope():  # records located for the job stay usable until it ends
        data = job_data(payload)
        if data is not None:
            job.arguments, job.kwargs = activejob.arguments(data)
        else:
            job.arguments = deserialize_args(payload["args"])
            kwargs = payload.get("kwargs")
            job.kwargs = deserialize_kwargs(kwargs) if kwargs else {}
        return middleware.perform(job, job.execute)


def _job(job_class: type[Job], payload: dict[str, Any], queue: str) -> Job:
    """The job as its payload describes it, arguments not loaded yet; ``queue_name`` is the
    queue it was taken from (the labels of its log lines and metrics, which must stay few).

    A class whose ``__init__`` raises (a setting it reads is missing) gives a job whose run
    raises that error: it fails through the whole chain, named in its lines, counted and
    retried like a ``perform`` that raised, as Sidekiq makes the job inside its retry handling."""
    try:
        job = job_class()
    except BaseException as error:  # the app's own __init__ may raise anything
        job = object.__new__(job_class)  # what Job.__init__ sets is set below, and by perform()
        job.execute = functools.partial(_raise, error)  # type: ignore[method-assign]
    job.jid = payload["jid"]
    job.payload = payload
    job.queue_name = queue
    count = payload.get("retry_count")
    job.executions = count + 2 if isinstance(count, int) else 1
    return job


def _raise(error: BaseException) -> NoReturn:
    raise error


def failed(job_class: type[Job], payload: dict[str, Any], error: BaseException,
           queue: str | None = None) -> Outcome:
    """What a failure means: the class's discard_on/retry_on rules first, then its retry policy:
    the payload's ``retry``, or the class's for a payload without one (written by hand, or by
    another client), as Sidekiq reads its job class's option. ``queue`` is where it was taken.

    A rule that raises (a ``retry_on`` wait callable, say) is logged and the job's own retry
    policy decides instead: the job still ends as failed and its thread goes on.
    """
    try:
        decision, delay = callbacks.decide(job_class, error, payload)
    except BaseException:  # the app's own code: a wait callable may raise anything
        logger.exception("retry_on/discard_on rules raised; the job's retry policy decides instead")
        decision, delay = "default", 0.0
    if decision == "discard":
        return Outcome(failed=True, error=error)
    if decision == "retry" and not 0 <= delay <= retry.MAX_DELAY:  # also false for NaN
        logger.error("a retry_on wait gave no number of seconds from 0 to a century; the job's retry "
                     "decides", wait=repr(delay))
    if "retry" not in payload:
        payload["retry"] = job_class.retry
    return retry.failure(payload, error_name(error), error_text(error),
                         delay=delay if decision == "retry" else None, error=error, queue=queue)


def unhandled(queue: str, raw: str, error: BaseException) -> Outcome:
    """The outcome of a job whose handling raised in kiq itself (a payload built to break it:
    nesting too deep to write back, numbers too large to schedule): the dead set, holding the
    payload exactly as it came, so that nothing is lost and an operator can look at it.
    Builds only strings, so it cannot fail the same way."""
    return retry.dead(wrap_invalid(queue, raw, f"kiq could not handle this job: {describe(error)}",
                                   error_class="kiq.UnhandledJobError"))


def error_name(error: BaseException) -> str:
    """The error's class as Sidekiq's ``error_class`` names it; the name the class was made
    with where its metaclass answers for ``__qualname__`` with anything but a string."""
    cls = type(error)
    try:
        module, name = cls.__module__, cls.__qualname__
    except BaseException:  # a metaclass's attribute lookup may raise anything
        module, name = "", ""
    if not isinstance(name, str) or not name:
        module, name = "", _QUALNAME.__get__(cls)
    if not isinstance(module, str) or module in ("builtins", ""):
        return name
    return f"{module}.{name}"


_QUALNAME = type.__dict__["__qualname__"]  # type's own, which no metaclass overrides


def error_text(error: BaseException) -> str:
    """``str(error)`` as a plain string of at most ``retry.MAX_MESSAGE`` characters, or a
    stand-in when the error's own ``__str__`` raises."""
    try:
        return str.__getitem__(str(error), slice(retry.MAX_MESSAGE))  # str's own: a subclass's may raise
    except BaseException:  # a hostile __str__ may raise anything
        return f"<{error_name(error)} whose str() raised>"


def describe(error: BaseException) -> str:
    return f"{error_name(error)}: {error_text(error)}"


def _fate(outcome: Outcome, payload: dict[str, Any]) -> dict[str, Any]:
    """Log fields saying what becomes of a failed job: its attempt and, for a retry, when.
    A failed job that goes nowhere was dropped by its retry policy (``retry: false``, or out of
    tries with ``dead: false``), else discarded by a ``discard_on`` rule."""
    dropped = retry.max_retries(payload.get("retry", True)) is None or payload.get("dead") is False
    fields: dict[str, Any] = {"then": outcome.action or ("drop" if dropped else "discard")}
    count = payload.get("retry_count")
    if type(count) is int:
        fields["attempt"] = count + 1
    if outcome.action == "retry":
        fields["retry_at"] = dt.datetime.fromtimestamp(outcome.score, dt.timezone.utc).isoformat()
    return fields


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)

"""The job class users subclass, modelled on Rails' Active Job.

Each subclass registers itself (kiq.registry) under its wire name when it is defined.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from kiq import adapters, callbacks, log
from kiq.client import Enqueued, check_batch_size, due_at, seconds
from kiq.payload import new_jid
from kiq.registry import JobNameError, lookup, register, registered

__all__ = ["Job", "JobNameError", "Options", "lookup", "registered"]

logger = log.get("kiq.job")

class Job:
    """Base class of every job: define ``perform`` and enqueue with ``perform_later``.

    ``queue`` and ``retry`` follow Sidekiq: ``retry = True`` means 25 tries,
    an int that many, ``0`` straight to the dead set, ``False`` drop on failure.
    ``job_name`` is the payload's ``class``; it defaults to the class name, as a
    Ruby constant would be, and may name a Ruby class such as ``Billing::InvoiceJob``.
    ``timeout`` (seconds) fails a run that takes longer into the retry set; its
    worker is then replaced, since a Python thread cannot be stopped from outside.
    ``active_job = True`` enqueues in Rails Active Job's Sidekiq shape, for a Ruby
    Active Job class of the same name (kiq runs jobs of either shape).
    ``backtrace`` is Sidekiq's option of that name: ``True`` (or a number of lines) keeps a
    failure's backtrace in its retry and dead entries (``error_backtrace``), where
    ``kiq retries show JID`` and Sidekiq's Web UI show it.
    """

    queue: ClassVar[str] = "default"
    retry: ClassVar[bool | int] = True
    job_name: ClassVar[str] = ""
    timeout: ClassVar[float | None] = None
    active_job: ClassVar[bool] = False
    backtrace: ClassVar[bool | int] = False
    _kiq_callbacks: ClassVar[dict[str, callbacks.Chain]] = callbacks.collect(object)
    _kiq_perform_callbacks: ClassVar[bool] = False  # any before/around/after_perform callback

    def __init__(self) -> None:
        """What a running job knows about itself (Active Job's names)."""
        self.jid = ""
        self.arguments: list[Any] = []
        self.kwargs: dict[str, Any] = {}
        self.queue_name = type(self).queue
        self.executions = 1
        self.payload: dict[str, Any] = {}

    @property
    def job_id(self) -> str:
        """Active Job's name for ``jid``."""
        return self.jid

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "job_name" not in cls.__dict__:
            cls.job_name = cls.__name__
        backtrace_lines(cls.backtrace, f"{cls.__qualname__}.backtrace")
        cls._kiq_callbacks = callbacks.collect(cls)
        cls._kiq_perform_callbacks = bool(cls._kiq_callbacks["perform"])
        if cls.perform is not Job.perform:  # a base class without perform (ApplicationJob) runs nothing
            register(cls)

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define perform()")

    def execute(self) -> Any:
        """Run ``perform`` with this job's arguments inside its perform callbacks.

        An ``async def perform`` runs to completion on ``run_coroutine``: the
        worker's event loop in a worker process, ``asyncio.run`` elsewhere.
        """
        if type(self)._kiq_perform_callbacks:
            try:
                return callbacks.around(self, "perform", self._call_perform)
            except callbacks.Abort as halt:
                logger.info("a callback halted the job; it counts as done", reason=str(halt) or "Abort")
                return None
        return self._call_perform()  # most jobs have no callbacks: no callback machinery (bench/notes.md)

    def _call_perform(self) -> Any:
        result = self.perform(*self.arguments, **self.kwargs)
        if result is not None and inspect.isawaitable(result):  # most jobs return None (bench/notes.md)
            return run_coroutine(result)
        return result

    @classmethod
    def perform_later(cls, /, *args: Any, **kwargs: Any) -> Enqueued:
        """Enqueue the job; arguments that cannot be serialized fail here, in the caller."""
        return Options(cls).perform_later(*args, **kwargs)

    @classmethod
    def perform_bulk(cls, args_list: Iterable[Sequence[Any]], batch_size: int = 1000) -> list[str]:
        """Enqueue one job per argument list, one Redis round trip per batch; returns the jids."""
        return Options(cls).perform_bulk(args_list, batch_size)

    @classmethod
    def set(
        cls,
        *,
        wait: float | dt.timedelta | None = None,
        wait_until: float | dt.datetime | None = None,
        queue: str | None = None,
        retry: bool | int | None = None,
        backtrace: bool | int | None = None,
    ) -> Options:
        """Options for the next enqueue, as in ``Job.set(wait=timedelta(hours=1)).perform_later(42)``."""
        if backtrace is not None:
            backtrace_lines(backtrace, "set(backtrace=...)")
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise TypeError(f"queue is a non-empty string, not {queue!r}")
        return Options(cls, wait=wait, wait_until=wait_until, queue=queue, retry=retry, backtrace=backtrace)

    @classmethod
    def perform_now(cls, /, *args: Any, **kwargs: Any) -> Any:
        """Run the job at once in the caller, with its perform callbacks, without a queue."""
        job = cls()
        job.jid = new_jid()  # as Active Job's job_id, which perform_now has too
        job.arguments, job.kwargs = list(args), dict(kwargs)
        return job.execute()


@dataclass
class Options:
    """A job class with enqueue options, returned by ``Job.set``."""

    job: type[Job]
    wait: float | dt.timedelta | None = None
    wait_until: float | dt.datetime | None = None
    queue: str | None = None
    retry: bool | int | None = None
    backtrace: bool | int | None = None

    def at(self) -> float | None:
        """When the job is due, as epoch seconds, or None for now. A time no adapter could keep
        (not finite, more than a century ahead) or of another type is refused in the caller."""
        now = time.time()
        if self.wait_until is not None:
            moment = self.wait_until
            if isinstance(moment, dt.datetime):
                return due_at("wait_until", moment, moment.timestamp(), now)
            if isinstance(moment, (int, float)) and not isinstance(moment, bool):
                return due_at("wait_until", moment, seconds(moment), now)
            raise TypeError(f"wait_until is a datetime or epoch seconds, not {moment!r}")
        if self.wait is not None:
            wait = self.wait
            if isinstance(wait, dt.timedelta):
                return due_at("wait", wait, now + wait.total_seconds(), now)
            if isinstance(wait, (int, float)) and not isinstance(wait, bool):
                return due_at("wait", wait, now + seconds(wait), now)
            raise TypeError(f"wait is a number of seconds or a timedelta, not {wait!r}")
        return None

    def perform_later(self, /, *args: Any, **kwargs: Any) -> Enqueued:
        adapter, at = adapters.current(), self.at()
        if not self.job._kiq_callbacks["enqueue"]:
            arguments_of(self.job).check(args, kwargs)
            return adapter.enqueue(self.job, args, kwargs, queue=self.queue, retry=self.retry, at=at,
                                   backtrace=self.backtrace)
        job = self.job()
        job.arguments, job.kwargs = list(args), dict(kwargs)
        job.queue_name = self.queue or self.job.queue
        job.jid = new_jid()  # as Active Job's job_id: known to every enqueue callback

        def enqueue() -> Enqueued:
            """The job as the callbacks left it: a ``before_enqueue`` may add an argument (a
            tenant's id) or choose the queue, as in Active Job."""
            arguments_of(self.job).check(job.arguments, job.kwargs)
            return adapter.enqueue(self.job, job.arguments, job.kwargs, queue=job.queue_name,
                                   retry=self.retry, at=at, backtrace=self.backtrace, jid=job.jid)

        try:
            return callbacks.around(job, "enqueue", enqueue)
        except callbacks.Abort as halt:
            logger.info("a callback halted the enqueue; nothing was enqueued", jid=job.jid,
                        reason=str(halt) or "Abort")
            return Enqueued(job.jid, self.job.job_name, job.queue_name, at, successfully_enqueued=False)

    def perform_bulk(self, args_list: Iterable[Sequence[Any]], batch_size: int = 1000) -> list[str]:
        check_batch_size(batch_size)
        args_list = list(args_list)
        arguments = arguments_of(self.job)
        for index, args in enumerate(args_list):
            if not arguments.accepts(args, _NO_KWARGS):
                arguments.check(args, _NO_KWARGS, f"args_list[{index}]: ")
        return adapters.current().enqueue_bulk(self.job, args_list, queue=self.queue, retry=self.retry,
                                               at=self.at(), backtrace=self.backtrace, batch_size=batch_size)


def backtrace_lines(value: object, name: str) -> None:
    """Refuse a ``backtrace`` option Sidekiq would not read: it is True, False or a number of lines."""
    if not (isinstance(value, bool) or (type(value) is int and value >= 0)):
        raise TypeError(f"{name} is True, False or a number of lines, not {value!r}")


_NO_KWARGS: dict[str, Any] = {}
_P = inspect.Parameter
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)


class Arguments:
    """What a job's ``perform`` accepts, to refuse a call in the enqueuing caller: a misspelt
    keyword would otherwise fail every retry in a worker.

    ``accepts`` is a quick test that is never wrong when it says yes (a tenth of the time of
    ``Signature.bind``); when it says no, ``check`` asks ``bind`` for the verdict and its reason.
    """

    def __init__(self, job: type[Job]) -> None:
        self.job = job.__name__
        self.signature = _perform_signature(job)
        params = list(self.signature.parameters.values()) if self.signature else []
        kinds = {param.kind for param in params}
        self.positional = tuple(param.name for param in params if param.kind in _POSITIONAL)
        self.keywords = frozenset(param.name for param in params
                                  if param.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY))
        self.required = sum(1 for param in params if param.kind in _POSITIONAL and param.default is _P.empty)
        self.required_positional_only = sum(1 for param in params
                                            if param.kind is _P.POSITIONAL_ONLY and param.default is _P.empty)
        self.required_keywords = frozenset(param.name for param in params
                                           if param.kind is _P.KEYWORD_ONLY and param.default is _P.empty)
        self.var_positional = self.signature is None or _P.VAR_POSITIONAL in kinds
        self.var_keyword = self.signature is None or _P.VAR_KEYWORD in kinds

    def accepts(self, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        if type(args) is not list and type(args) is not tuple:
            return False
        count = len(args)
        too_many = count > len(self.positional) and not self.var_positional
        if too_many or count < self.required_positional_only:
            return False
        if not kwargs:
            return count >= self.required and not self.required_keywords
        taken = self.positional[:count]
        for key in kwargs:
            if key in taken or not (self.var_keyword or key in self.keywords):
                return False
        return (all(name in kwargs for name in self.positional[count : self.required])
                and self.required_keywords <= kwargs.keys())

    def check(self, args: Sequence[Any], kwargs: dict[str, Any], where: str = "") -> None:
        """Raise TypeError, naming the job's ``perform`` signature, unless it takes these arguments."""
        if self.signature is None or self.accepts(args, kwargs):
            return
        if not isinstance(args, Sequence) or isinstance(args, (str, bytes, bytearray)):
            raise TypeError(f"{where}a job's arguments are a list or tuple, not {type(args).__name__}")
        missing = self.positional[len(args):self.required_positional_only]
        try:
            if missing:  # Python 3.13.0's bind lets a keyword of its name into **kwargs instead
                raise TypeError(f"missing a required argument: {missing[0]!r}")
            self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{where}{self.job}.perform{_unannotated(self.signature)}: {error}") from None


_arguments: dict[type[Job], Arguments] = {}


def arguments_of(job: type[Job]) -> Arguments:
    """The job class's ``Arguments``, read from ``perform`` on first use."""
    found = _arguments.get(job)
    if found is None:
        found = _arguments[job] = Arguments(job)
    return found


def _perform_signature(job: type[Job]) -> inspect.Signature | None:
    """``perform``'s signature as a caller passes arguments (without ``self``); None when it
    cannot be read, and then any arguments are let through."""
    try:
        signature = inspect.signature(job.perform)
    except (TypeError, ValueError):
        return None
    if isinstance(inspect.getattr_static(job, "perform"), (staticmethod, classmethod)):
        return signature
    params = list(signature.parameters.values())
    if params and params[0].kind in _POSITIONAL:
        params = params[1:]  # self; a perform(*args) takes self in its args and keeps them
    return signature.replace(parameters=params)


def _unannotated(signature: inspect.Signature) -> inspect.Signature:
    """The signature as a message shows it: names and defaults, as the caller writes them."""
    params = [param.replace(annotation=_P.empty) for param in signature.parameters.values()]
    return signature.replace(parameters=params, return_annotation=inspect.Signature.empty)


def _run_in_new_loop(awaitable: Awaitable[Any]) -> Any:
    """Run an ``async def perform`` to its end with ``asyncio.run``. Called from code that runs
    on an event loop itself (an async test, an async web view), whose loop cannot run the job
    while it waits for this call, a thread of its own does, in the caller's context."""
    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kiq-perform-now") as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, wait()).result()


run_coroutine: Callable[[Awaitable[Any]], Any] = _run_in_new_loop
"""How ``execute`` completes an ``async def perform``; a worker process points it at its own loop."""

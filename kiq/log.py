"""Logging through structlog: JSON in production, readable on a terminal, one shape for every line.

The standard library's loggers (redis-py, click) go through the same renderer,
so a log shipper sees one format.

Every line reaches stderr through ``stream``, which writes and flushes it under
one lock that each fork takes first. The master forks while its scheduler and
metrics threads may be logging; a child forked while another thread was inside a
write would inherit that thread's locks (structlog's per-file lock, and the lock
of ``sys.stderr``'s buffer, which Python does not renew in a child) and hang at
its first line. The standard library renews its own handler locks after a fork,
but not the stream's.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from kiq.terminal import printable

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")
TRACEBACK_MAX = 64_000  # characters of a traceback in a line: its start and its end are kept

_level = logging.NOTSET  # setup()'s threshold; lines below it are dropped
_write_lock = threading.Lock()

_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("kiq_job", default=None)
_span_ids: Callable[[], tuple[str, str] | None] | None = None  # kiq.otel's, while it is instrumented


def bind_job(fields: dict[str, Any]) -> None:
    """Tag every line logged during this thread's current job (``jid``, ``queue``, ``class``).

    One context variable set per job, instead of three of structlog's, keeps this off the
    profile; variables the previous job bound with structlog are dropped here too, so
    nothing leaks from one job into the next on the same thread.
    """
    structlog.contextvars.clear_contextvars()
    _job.set(fields)


def enabled(level: int) -> bool:
    """Whether a line at ``level`` (``logging.INFO``...) would be written.

    For the per-job lines: a call that the filter drops still goes through structlog's
    logger proxy, twice per job (bench/notes.md).
    """
    return level >= _level


def _merge_job(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The job's fields, and the current span's ``trace_id`` and ``span_id`` while a span is
    current. One processor, not two: another would cost a call per line, 0.4% of a no-op job's
    path at the info level even with tracing off (bench/notes.md); this costs one test."""
    fields = _job.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    if _span_ids is not None:
        ids = _span_ids()
        if ids is not None:
            event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict


def trace_ids(source: Callable[[], tuple[str, str] | None] | None) -> None:
    """Where lines find the current span's ``trace_id`` and ``span_id`` (hex), or None for
    nowhere: kiq.otel sets it when it instruments and clears it when it stops."""
    global _span_ids
    _span_ids = source


class _Stderr:
    """A file-like stderr for log lines: each write is written and flushed whole, under
    the lock that forks wait for.

    A line that cannot be written is dropped: stderr piped to a reader that went away (``|
    head``, a log shipper restarting) or a full disk must not fail the job, the signal
    handler or the thread that was logging; the line would have gone nowhere anyway.
    """

    def write(self, text: str) -> int:
        with _write_lock, contextlib.suppress(OSError, ValueError):  # ValueError: stderr was closed
            sys.stderr.write(text)
            sys.stderr.flush()
        return len(text)

    def flush(self) -> None:
        """Each write is flushed already."""


stream = _Stderr()
os.register_at_fork(before=_write_lock.acquire, after_in_parent=_write_lock.release,
                    after_in_child=_write_lock.release)


class _Writer:
    """structlog's logger: one rendered line per call, through ``stream``."""

    def msg(self, message: str) -> None:
        stream.write(message + "\n")

    debug = info = warn = warning = error = err = critical = exception = fatal = failure = log = msg


def _writer(*args: Any) -> _Writer:
    return _Writer()


def format_exc_info(logger: Any, method: str,
                    event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's ``format_exc_info``, made total and bounded: the ``exc_info`` of a line as
    its ``exception`` text, at most ``TRACEBACK_MAX`` characters.

    A job's exception is the app's own object: the traceback module fails on some (a
    SyntaxError whose offset is no number, ``__notes__`` that raise), and one that fails the
    line ends the thread that logs it; a 50 MB message or a chain of thousands of causes made
    one line of 100 MB."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        error: object = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        error = exc_info[1]
    else:  # True, or any other true value, as structlog and logging read it: the one being handled
        error = sys.exc_info()[1]
    if isinstance(error, BaseException):
        event_dict["exception"] = bounded(traceback_text(error), TRACEBACK_MAX)
    return event_dict


def traceback_text(error: BaseException) -> str:
    """The traceback as Python prints it; else its frames alone, when the exception's own parts
    cannot be rendered."""
    try:
        return "".join(traceback.format_exception(error))
    except BaseException:  # the app's exception: any of its parts may raise
        pass
    try:
        frames = "".join(traceback.format_tb(error.__traceback__))
    except BaseException:
        frames = ""
    return f"Traceback (most recent call last):\n{frames}(the exception itself could not be rendered)\n"


def bounded(text: str, limit: int) -> str:
    """``text``, or its start and its end with what was cut between them said."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... {len(text) - 2 * half:,} characters cut ...\n{text[-half:]}"


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    _merge_job,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the standard library's root logger for this process."""
    last = _configure(level, fmt)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_level)
    threading.excepthook = _thread_died


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as a line of the log: Python's own hook writes bare text
    between the JSON lines. SystemExit ends a thread quietly, as there."""
    if args.exc_type is SystemExit:
        return
    get("kiq").error("a thread ended with an exception", thread=args.thread.name if args.thread else None,
                     exc_info=args.exc_value)


def setup_unless_configured() -> None:
    """kiq's lines, at the info level on stderr, in an app process that has not configured
    structlog itself: the async adapter runs jobs there, and its lines then name their job as
    a worker's do (structlog's own default writes every level to stdout, without the job's
    fields). The standard library's logging stays the app's."""
    if not structlog.is_configured():
        _configure("info", "auto")


def _configure(level: str, fmt: str) -> list[Any]:
    """Configure structlog with kiq's processors; returns the last of them (the traceback's and
    the renderer), for the standard library's lines."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    last: list[Any] = (
        [format_exc_info, _printable, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        if fmt == "console"
        else [format_exc_info, structlog.processors.JSONRenderer()]  # JSON escapes control characters
    )
    global _level
    _level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*_SHARED, *last],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=_writer,
        cache_logger_on_first_use=True,  # an unbound proxy costs a bind per call, even when filtered
    )
    return last


def _printable(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A console line's strings with their control characters escaped (kiq.terminal): a job's
    error message, a queue's name or a payload read from Redis reach the operator's terminal
    here. Line breaks stay, for tracebacks and stacks."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = printable(value, keep="\n")
    return event_dict


def get(name: str) -> Any:
    return structlog.get_logger(name)


def dump_stacks(logger: Any) -> None:
    """Log every thread's current stack, one line per thread (USR1)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        logger.info("thread stack", thread=names.get(ident, str(ident)), stack=stack)

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
from collections.abc import Callable
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")

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


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the standard library's root logger for this process."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_job,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    global _level
    numeric = logging.getLevelName(level.upper())
    _level = numeric
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_writer,
        cache_logger_on_first_use=True,  # an unbound proxy costs a bind per call, even when filtered
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def get(name: str) -> Any:
    return structlog.get_logger(name)


def dump_stacks(logger: Any) -> None:
    """Log every thread's current stack, one line per thread (USR1)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        logger.info("thread stack", thread=names.get(ident, str(ident)), stack=stack)

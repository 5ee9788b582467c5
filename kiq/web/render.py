"""The templates' environment: autoescaping on for every template, and the filters pages use."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from typing import Any

import jinja2

from kiq.api import Job
from kiq.payload import COUNT_LIMIT
from kiq.retry import max_retries

ARGS_SHOWN = 120  # characters of a job's arguments a listing shows; the job's own page shows all


def environment() -> jinja2.Environment:
    """Templates that render a field another writer left out (an old Sidekiq's process info, a
    hand-made payload) as empty, instead of failing the page."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("kiq.web", "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=ago, utc=utc, compact=compact, pretty=pretty, short=short,
                       duration=duration, millis=millis, megabytes=megabytes, failures=failures,
                       retries_allowed=retries_allowed)
    return env


def finite(value: Any) -> float | None:
    """A number another writer stored, as a float; None for anything else, and for one no float
    holds (an integer of 400 digits, inf), which would fail the page's arithmetic."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def ago(epoch: Any, now: float | None = None) -> str:
    """``12 s ago`` or ``in 3 min``, for a time in epoch seconds; "-" for anything else."""
    epoch = finite(epoch)
    if not epoch:
        return "-"
    seconds = (time.time() if now is None else now) - epoch
    text = duration(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def duration(seconds: Any) -> str:
    seconds = finite(seconds)
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def millis(ms: Any) -> str:
    """A run time given in milliseconds: ``4.2 ms``, ``85 ms``, ``1.5 s``; "-" for none."""
    ms = finite(ms)
    if ms is None:
        return "-"
    if ms >= 1000:
        return duration(ms / 1000)
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def megabytes(kilobytes: Any) -> str:
    """A process's RSS, given in kB, in MB; "-" for a size no float holds."""
    size = finite(kilobytes)
    return "-" if size is None else f"{size / 1024:.1f} MB"


def utc(epoch: Any) -> str:
    """The time (epoch seconds or a datetime) in UTC; "-" for anything else."""
    if isinstance(epoch, dt.datetime):
        moment = epoch
    elif epoch := finite(epoch):
        try:
            moment = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
        except (OverflowError, ValueError, OSError):  # a score of inf or 1e300, written by anything
            return "-"
    else:
        return "-"
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def compact(value: Any) -> str:
    """JSON as a payload shows it, keeping non-ASCII text readable."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def pretty(value: Any) -> str:
    """JSON over several lines, for a job's own page."""
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def short(text: str, limit: int = ARGS_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failures(job: Job) -> int | str:
    """How many times the job has failed: Sidekiq's ``retry_count`` is 0 after the first failure
    (it counts the retries run), which read as "0 retries" next to an error looks like none.
    Empty for a job that never failed."""
    count = job.payload.get("retry_count")
    if type(count) is int and count < COUNT_LIMIT:
        return max(count, 0) + 1
    return 1 if "error_class" in job.payload else ""


def retries_allowed(retry: Any) -> str:
    """A payload's ``retry`` option as the retry logic (kiq.retry) reads it."""
    default = retry is True or isinstance(retry, jinja2.Undefined)  # a payload without the field
    limit = max_retries(True if default else retry)
    if limit is None:
        return "none: a failure drops the job"
    if limit == 0:
        return "none: the first failure sends the job to Dead"
    return f"up to {limit}" + (" (the default)" if default else "")

"""The templates' environment: autoescaping on for every template, and the filters pages use."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import jinja2

ARGS_SHOWN = 120  # characters of a job's arguments a listing shows; the job's own page shows all


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("kiq.web", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=ago, utc=utc, compact=compact, pretty=pretty, short=short,
                       duration=duration)
    return env


def ago(epoch: float | None, now: float | None = None) -> str:
    """``12 s ago`` or ``in 3 min``, for a time in epoch seconds."""
    if not epoch:
        return "-"
    seconds = (time.time() if now is None else now) - epoch
    text = duration(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def utc(epoch: float | dt.datetime | None) -> str:
    if epoch is None or epoch == 0:
        return "-"
    moment = epoch if isinstance(epoch, dt.datetime) else dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def compact(value: Any) -> str:
    """JSON as a payload shows it, keeping non-ASCII text readable."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def pretty(value: Any) -> str:
    """JSON over several lines, for a job's own page."""
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def short(text: str, limit: int = ARGS_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""What happens to a job that failed: Sidekiq's retry rules, fields and backoff.

Sidekiq's per-job options are honoured as Sidekiq honours them: ``retry_queue`` (retries go
to that queue), ``dead: false`` (a job out of retries is dropped, not filed in ``dead``) and
``backtrace`` (``true`` or a number of lines, stored compressed in ``error_backtrace``).
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any

from kiq.payload import dump, epoch_seconds, stamp

DEFAULT_MAX_RETRIES = 25
DEAD_MAX_JOBS = 10_000
DEAD_TIMEOUT = 180 * 24 * 3600
MAX_MESSAGE = 10_000
MAX_COUNT = 500  # a larger retry_count counts as this one (its backoff is some 2,000 years)
MAX_DELAY = 100 * 365 * 24 * 3600.0
MAX_BACKTRACE = 1 << 20


# For the scripts that add to the dead set: trims it as Sidekiq does, to the entries of the
# last DEAD_TIMEOUT seconds before ``now`` and at most DEAD_MAX_JOBS of them.
TRIM_DEAD = """
local function trim_dead(dead, now)
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', tonumber(now) - __TIMEOUT__)
  redis.call('ZREMRANGEBYRANK', dead, 0, -(__MAX__ + 1))
end
""".replace("__TIMEOUT__", str(DEAD_TIMEOUT)).replace("__MAX__", str(DEAD_MAX_JOBS))


@dataclass(frozen=True)
class Outcome:
    """The end of one job, acknowledged together with its in-progress entry.

    ``action`` is ``""`` (done or dropped), ``"retry"`` or ``"dead"``; ``payload``
    and ``score`` are the new job hash and its sorted-set score for the latter two.
    ``error`` is what the job raised, for kiq's members of the server chain, which see the
    outcome and not the exception (a tracing span records it); it is never stored.
    """

    failed: bool
    action: str = ""
    payload: str = ""
    score: float = 0.0
    error: BaseException | None = field(default=None, compare=False, repr=False)


SUCCESS = Outcome(failed=False)


def backoff(retry_count: int) -> float:
    """Seconds before the next try: Sidekiq's ``count**4 + 15 + rand(10) * (count + 1)``.

    The count is capped, so that a crafted ``retry_count`` cannot overflow the score."""
    count = min(max(retry_count, 0), MAX_COUNT)
    return float(count**4 + 15 + random.randrange(10) * (count + 1))


def max_retries(retry: Any) -> int | None:
    """Tries allowed by a payload's ``retry`` field; None means drop on failure."""
    if retry is True:
        return DEFAULT_MAX_RETRIES
    if retry is False or retry is None:
        return None
    if isinstance(retry, int):
        return max(retry, 0)
    return DEFAULT_MAX_RETRIES


def failure(job: dict[str, Any], error_class: str, message: str, now: float | None = None,
            delay: float | None = None, error: BaseException | None = None, kept: bool = False,
            queue: str | None = None, frames: list[str] | None = None) -> Outcome:
    """Record a failure in ``job`` (mutated) and decide between retry, dead and drop.

    A retry goes to the job's ``retry_queue``, else to ``queue``, the queue it was taken from,
    as Sidekiq files one (a payload without a ``queue`` field is not retried into "default").

    ``delay`` (from a ``retry_on`` rule) retries after that many seconds whatever the job's
    ``retry`` limit says; one that is not a number of seconds from now to a century falls back
    to the backoff. ``error`` gives the backtrace a job's ``backtrace`` option asks for, and
    goes with the outcome. ``kept`` (a job no worker here could run) ignores the job's own
    ``retry``, ``retry_for`` and ``dead: false``, which are its class's to apply: it gets the
    default tries, then the dead set, and is never dropped. ``frames`` (innermost first) stand
    for the backtrace of a failure that raised nothing: a timeout.
    """
    now = time.time() if now is None else now
    if delay is not None and not 0 <= delay <= MAX_DELAY:  # also false for NaN
        delay = None
    limit = max_retries(True if kept else job.get("retry", True))
    if limit is None and delay is None:
        return Outcome(failed=True, error=error)
    retry_queue = job.get("retry_queue")
    if isinstance(retry_queue, str) and retry_queue:
        job["queue"] = retry_queue
    elif queue:
        job["queue"] = queue
    job["error_message"] = scrubbed(message[:MAX_MESSAGE])
    job["error_class"] = scrubbed(error_class)
    lines = job.get("backtrace")
    if lines is True or (type(lines) is int and lines > 0):
        kept_lines = None if lines is True else lines
        if error is not None:
            job["error_backtrace"] = compress_backtrace(error, kept_lines)
        elif frames:  # where a job was when its timeout failed it, innermost first
            job["error_backtrace"] = encode_backtrace(frames[:kept_lines])
    previous = job.get("retry_count")
    if type(previous) is int:  # -1 after a manual retry, which gives a try back (as in Sidekiq)
        job["retry_count"] = min(max(previous + 1, 0), MAX_COUNT)
        job["retried_at"] = stamp(now)
    else:
        job["failed_at"] = stamp(now)
        job["retry_count"] = 0
    count = job["retry_count"]
    if delay is not None:
        return Outcome(True, "retry", dump(job), now + delay, error)
    if limit is not None and count < limit and (kept or not _past_retry_for(job, now)):
        return Outcome(True, "retry", dump(job), now + backoff(count), error)
    if job.get("dead") is False and not kept:
        return Outcome(failed=True, error=error)
    return dead(job, now, error)


def _past_retry_for(job: dict[str, Any], now: float) -> bool:
    """Sidekiq 7's ``retry_for``: seconds from the first failure after which no retry is left,
    whatever ``retry`` allows."""
    window = job.get("retry_for")
    if isinstance(window, bool) or not isinstance(window, (int, float)):
        return False
    first = epoch_seconds(job.get("failed_at"))
    return first is not None and first + window < now


def scrubbed(text: str) -> str:
    """``text`` with U+FFFD for each lone surrogate (a file name's bytes that were not UTF-8,
    through os.fsdecode), as Sidekiq scrubs its error messages: Ruby's JSON cannot write such a
    string back, so Sidekiq's poller, API or Web UI would lose the job holding it."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def dead(job: dict[str, Any], now: float | None = None, error: BaseException | None = None) -> Outcome:
    """Send ``job`` to the dead set as it is."""
    now = time.time() if now is None else now
    return Outcome(True, "dead", dump(job), now, error)


def compress_backtrace(error: BaseException, limit: int | None = None) -> str:
    """Sidekiq's ``error_backtrace``: the innermost frames first (``limit`` of them, if a
    number), as a JSON list of ``file:line:in name`` strings, deflated and base64-encoded."""
    frames = frame_lines(traceback.extract_tb(error.__traceback__))
    return encode_backtrace(frames if limit is None else frames[:limit])


def frame_lines(stack: traceback.StackSummary) -> list[str]:
    """A stack's frames as Sidekiq writes a backtrace: ``file:line:in name``, innermost first."""
    return [f"{frame.filename}:{frame.lineno}:in {frame.name}" for frame in reversed(stack)]


def encode_backtrace(frames: list[str]) -> str:
    """Frames as Sidekiq stores ``error_backtrace``: a JSON list, deflated and base64-encoded."""
    return base64.encodebytes(zlib.compress(json.dumps(frames).encode())).decode()


def decode_backtrace(stored: object) -> list[str]:
    """The frames of an ``error_backtrace`` as ``compress_backtrace`` (and Sidekiq 6 and later)
    writes it, or as the plain list older Sidekiqs wrote; ``[]`` for none, or for anything
    unreadable. At most ``MAX_BACKTRACE`` bytes are inflated, whatever a payload claims."""
    if isinstance(stored, list):
        return [str(frame) for frame in stored]
    if not isinstance(stored, str):
        return []
    try:
        text = zlib.decompressobj().decompress(base64.b64decode(stored), MAX_BACKTRACE)
        frames = json.loads(text)
    except (ValueError, zlib.error):
        return []
    return [str(frame) for frame in frames] if isinstance(frames, list) else []

"""What every layer knows about a job payload, below the job runtime.

A payload is Sidekiq's job hash, read from Redis as text. The scheduler, recovery, the
fetcher and the processor all need to read one, to wrap one that cannot be read, to mark one
failed with Sidekiq's fields, and to name its job class; jids are made here too. Nothing here
imports the job runtime (job classes, arguments, adapters), so the master, which never runs a
job, needs none of it for this.

Sidekiq's versions write two job formats: 6 and 7 write the time fields (``created_at``,
``enqueued_at``, ``failed_at``, ``retried_at``) as float epoch seconds and wrap Active Jobs in
Rails' ``JobWrapper``; 8 writes integer epoch milliseconds and ``Sidekiq::ActiveJob::Wrapper``.
kiq reads both everywhere (``epoch_seconds``), and writes the one the ``sidekiq_format``
setting names (``stamp``, ``wrapper_class``): the process-wide choice is made once at boot
(``set_format``), and a client or API may be given its own.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

INVALID_CLASS = "kiq.InvalidPayload"
ACTIVE_JOB_WRAPPER = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
SIDEKIQ8_WRAPPER = "Sidekiq::ActiveJob::Wrapper"
# Rails' adapter and Sidekiq 7.3's write the first (7.3's is a subclass of the second); Sidekiq 8's
# writes the second.
ACTIVE_JOB_WRAPPERS = frozenset({ACTIVE_JOB_WRAPPER, SIDEKIQ8_WRAPPER})
FORMATS = (6, 7, 8)
DEFAULT_FORMAT = 6
COUNT_LIMIT = 2**63  # Redis keeps counters in 64 bits: a count beyond was not made by INCR
FORMAT_ENV = "KIQ_SIDEKIQ_FORMAT"

class InvalidPayloadError(ValueError):
    """A payload kiq cannot run."""


_raw_decode = json.JSONDecoder().raw_decode


def _loads(raw: str) -> Any:
    """``json.loads``, without its whitespace regex and two Python frames for the payloads
    clients write (which have no whitespace around them); ``json.loads`` only for the others,
    or for its error (bench/notes.md)."""
    try:
        value, end = _raw_decode(raw)
        if end == len(raw):
            return value
    except ValueError:
        pass
    return json.loads(raw)  # whitespace around the document, or the error to report


def decode(raw: str) -> dict[str, Any]:
    """The payload as a dict with the fields kiq needs, or InvalidPayloadError saying what is wrong."""
    try:
        payload = _loads(raw)
    except (ValueError, RecursionError):
        raise InvalidPayloadError("payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidPayloadError("payload is not a JSON object")
    if not isinstance(payload.get("class"), str) or not payload["class"]:
        raise InvalidPayloadError("payload has no 'class' string")
    if not isinstance(payload.get("args"), list):
        raise InvalidPayloadError("payload has no 'args' list")
    if not isinstance(payload.get("jid"), str):
        raise InvalidPayloadError("payload has no 'jid' string")
    if not isinstance(payload.get("kwargs", {}), dict):
        raise InvalidPayloadError("payload's 'kwargs' is not an object")
    if not isinstance(payload.get("queue", ""), str):
        raise InvalidPayloadError("payload's 'queue' is not a string")
    return payload


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_dumps_escaped = json.JSONEncoder(separators=(",", ":")).encode
_RUBY_DIFFERS = re.compile(r"\de[+-]|\d{16}\.0")  # Python float text that Ruby writes otherwise
# strings skipped a run at a time: the unrolled loop never backtracks, and Python 3.10 has no
# possessive quantifiers
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?\d+(?:\.\d+)?(?:e[+-]\d+)?')


def dump(value: Any, strict: bool = False) -> str:
    """JSON text exactly as Ruby's ``JSON.generate`` writes the same value, as Sidekiq writes
    every job (``Sidekiq.dump_json``): compact, characters as they are, floats as Ruby prints
    them (``1.0e-05``, ``1.0e+15``). Sidekiq finds an entry of a sorted set by encoding it
    again: ``reschedule`` with text that differs adds a second entry, dated 1970, that runs at
    once beside the first, and its Web UI's filter misses it.

    A string that is not valid Unicode (a lone surrogate, as ``surrogateescape`` decodes bytes
    that are not UTF-8) has no UTF-8 to write: ``strict`` raises UnicodeEncodeError for it, else
    it is written escaped (``\\udcff``), as Python writes it."""
    text = _dumps(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            if strict:
                raise
            text = _dumps_escaped(value)
    if _RUBY_DIFFERS.search(text):
        text = _TOKEN.sub(_ruby_number, text)
    return text


def _ruby_number(match: re.Match[str]) -> str:
    """A token of Python's JSON as Ruby writes it: strings as they are; a float with one digit
    before its exponent gets ``.0``, and a whole one of 16 digits an exponent (Ruby writes a
    whole float in fixed notation only below 1e15, Python below 1e16)."""
    token = match.group()
    if token[0] == '"':
        return token
    sign, digits = ("-", token[1:]) if token[0] == "-" else ("", token)
    mantissa, exponent = digits.partition("e")[::2]
    if exponent:
        return token if "." in mantissa else f"{sign}{mantissa}.0e{exponent}"
    whole, fraction = digits.partition(".")[::2]
    if fraction != "0" or len(whole) != 16:
        return token
    significant = whole.rstrip("0")
    return f"{sign}{significant[0]}.{significant[1:] or '0'}e+15"


def wrap_invalid(queue: str, raw: str, reason: str,
                 error_class: str = "kiq.InvalidPayloadError") -> dict[str, Any]:
    """A readable job hash that carries an unreadable payload into the dead set.

    Sidekiq's Web UI parses every dead entry, so the raw text travels as the
    only argument of a job hash rather than as the entry itself. Bytes that are
    not UTF-8 are kept exactly in ``raw_base64``.
    """
    now = stamp(time.time())
    data = raw.encode("utf-8", "surrogateescape")
    text = data.decode("utf-8", "replace")
    wrapped: dict[str, Any] = {
        "class": INVALID_CLASS,
        "args": [text],
        "jid": new_jid(),
        "queue": queue,
        "retry": False,
        "created_at": now,
        "error_class": error_class,
        "error_message": reason,
        "failed_at": now,
        "retry_count": 0,
    }
    if text != raw:
        wrapped["raw_base64"] = base64.b64encode(data).decode()
    return wrapped


def mark_failed(job: dict[str, Any], error_class: str, message: str, now: float) -> dict[str, Any]:
    """``job`` with Sidekiq's fields of a failure that goes straight to the dead set."""
    job.update(error_class=error_class, error_message=message, failed_at=stamp(now))
    job.setdefault("retry_count", 0)
    return job


def check_format(value: Any) -> int:
    """``value`` as one of FORMATS (also from a string, as an environment variable gives it), or
    ValueError saying which are known."""
    try:
        fmt = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        fmt = None
    if fmt not in FORMATS:
        raise ValueError(f"must be one of {', '.join(map(str, FORMATS))} (the Sidekiq version whose job "
                         f"format kiq writes), not {value!r}")
    return fmt


def env_format() -> int:
    """The format ``KIQ_SIDEKIQ_FORMAT`` names, or the default (6); ValueError for a bad one."""
    raw = os.environ.get(FORMAT_ENV, "")
    return check_format(raw) if raw else DEFAULT_FORMAT


_writing: int | None = None  # set_format's choice; None until then (the environment's, read lazily)


def set_format(fmt: int) -> None:
    """Make ``fmt`` the format this process writes (``kiq start`` does it from the config, before
    any fork, so the scheduler, recovery and every worker write the same)."""
    global _writing
    _writing = check_format(fmt)


def writing_format() -> int:
    """The format this process writes when a caller names none."""
    global _writing
    if _writing is None:
        _writing = env_format()
    return _writing


def stamp(now: float, fmt: int | None = None) -> float | int:
    """``now`` (epoch seconds) as a time field of format ``fmt`` writes it: float seconds for
    Sidekiq 6 and 7, integer milliseconds for 8."""
    if (writing_format() if fmt is None else fmt) >= 8:
        return int(now * 1000)
    return now


def wrapper_class(fmt: int | None = None) -> str:
    """The ``class`` of an Active Job payload in format ``fmt``."""
    return SIDEKIQ8_WRAPPER if (writing_format() if fmt is None else fmt) >= 8 else ACTIVE_JOB_WRAPPER


def epoch_seconds(value: Any) -> float | None:
    """Epoch seconds from a time field (``enqueued_at``, ``created_at``...): float seconds as
    Sidekiq before 8 writes them, or the integer milliseconds of Sidekiq 8; None for anything
    else, an integer too large for a float and an infinite or NaN float included (JSON can carry
    all three, and a reader must not fail on one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = value / 1000.0 if value > 1e11 else float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def read_count(value: Any) -> int:
    """A count that kiq, Sidekiq or anything else with access to Redis stored (a stat counter,
    a process's ``busy``); 0 for one that is missing, no whole number, or beyond the 64 bits of
    Redis's counters (hundreds of digits that no float or clock holds), so that a reader shows
    the rest instead of failing."""
    try:
        count = int(value or 0)
    except (ValueError, TypeError, OverflowError):
        return 0
    return count if -COUNT_LIMIT <= count < COUNT_LIMIT else 0


def read_object(text: Any) -> dict[str, Any]:
    """A JSON object that another writer stored (a process's ``info``, a running job's entry);
    empty for anything else, text nested too deep included."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def enqueued_seconds(raw: str) -> float | None:
    """When the job in the raw payload ``raw`` was enqueued, as epoch seconds; None for a
    payload that does not say or cannot be read, nested too deep included: a worker's heartbeat
    reads its prefetched jobs with it (Sidekiq's latency reads the same field)."""
    try:
        payload = _loads(raw)
    except (ValueError, RecursionError):
        return None
    return epoch_seconds(payload.get("enqueued_at")) if isinstance(payload, dict) else None


def waited(oldest: str | None, prefetched: float | None, now: float) -> float:
    """A queue's latency: seconds since the older of its oldest payload (raw, if any) and its
    oldest prefetched job (epoch seconds, if any) was enqueued; 0 when neither says."""
    times = [at for at in (enqueued_seconds(oldest) if oldest is not None else None, prefetched) if at]
    return max(0.0, now - min(times)) if times else 0.0


def job_data(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Active Job data of a wrapper payload, or None if ``payload`` is not one."""
    if payload.get("class") not in ACTIVE_JOB_WRAPPERS:
        return None
    args = payload.get("args")
    if isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict):
        return args[0]
    return None


def job_name(payload: Mapping[str, Any]) -> str:
    """The job class a payload names: Active Job's ``job_class`` for a Rails wrapper, else ``class``."""
    data = job_data(payload)
    return str(data.get("job_class")) if data is not None else str(payload["class"])


def new_jid() -> str:
    """24 hex digits read from the operating system's CSPRNG, as Sidekiq's ``SecureRandom.hex(12)``.

    An app may hand a jid out as a token (a status URL, say), so no jid may be predictable
    from another: a seeded generator in the process would be, from 624 of its outputs.
    """
    return os.urandom(12).hex()


def new_jids(count: int) -> list[str]:
    """``count`` jids from one read of the CSPRNG."""
    token = os.urandom(12 * count).hex()
    return [token[start : start + 24] for start in range(0, 24 * count, 24)]

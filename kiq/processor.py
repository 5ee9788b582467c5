"""Running one job from its payload, and deciding what becomes of it.

Nothing a payload says is trusted: invalid JSON, missing fields and unknown
job classes go to the dead set with the reason, and only classes in the job
registry are ever instantiated.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from kiq import activejob, callbacks, globalid, log, retry
from kiq import job as jobs
from kiq.client import new_jid
from kiq.retry import Outcome
from kiq.serialize import deserialize_args, deserialize_kwargs

INVALID_CLASS = "kiq.InvalidPayload"

logger = log.get("kiq.job")

_raw_decode = json.JSONDecoder().raw_decode


def _loads(raw: str) -> Any:
    """``json.loads``, without its whitespace regex and two Python frames for the payloads
    clients write: on a worker that has been idle, that cold code took about 30 of the 90 us
    of decoding one (see docs/design.md)."""
    try:
        value, end = _raw_decode(raw)
        if end == len(raw):
            return value
    except ValueError:
        pass
    return json.loads(raw)  # whitespace around the document, or the error to report


class InvalidPayloadError(ValueError):
    """A payload kiq cannot run."""


class UnknownJobError(LookupError):
    """A payload names a class that no required module registered."""


def process(queue: str, raw: str) -> Outcome:
    """Run the job in ``raw`` (taken from ``queue``) and return what to acknowledge."""
    prepared = prepare(queue, raw)
    if isinstance(prepared, Outcome):
        return prepared
    return run(*prepared, queue)


def prepare(queue: str, raw: str) -> tuple[type[jobs.Job], dict[str, Any]] | Outcome:
    """The job class and payload to run, or the dead-set outcome of a payload that cannot run."""
    try:
        payload = decode(raw)
    except InvalidPayloadError as error:
        logger.error("invalid payload", queue=queue, error=str(error))
        return retry.dead(wrap_invalid(queue, raw, str(error)))
    data = activejob.job_data(payload)
    name = str(data.get("job_class")) if data is not None else payload["class"]
    job_class = jobs.lookup(name)
    if job_class is None:
        unknown = UnknownJobError(f"no job class registered as {name!r}")
        logger.error("unknown job class", queue=queue, jid=payload["jid"], error=str(unknown))
        return retry.dead(_with_error(payload, unknown))
    return job_class, payload


def timed_out(payload: dict[str, Any], seconds: float) -> Outcome:
    """The outcome of a job that ran past its class's ``timeout``: a failure like any other."""
    message = f"job ran longer than its timeout of {seconds:g}s"
    logger.warning("fail", jid=payload["jid"], error=f"kiq.JobTimeout: {message}")
    return retry.failure(payload, "kiq.JobTimeout", message)


def run(job_class: type[jobs.Job], payload: dict[str, Any], queue: str) -> Outcome:
    """Run a job and turn what happened into the outcome to acknowledge; never raises."""
    log.bind_job({"jid": payload["jid"], "queue": queue, "class": job_class.job_name})
    if log.enabled(logging.DEBUG):
        logger.debug("start")
    started = time.perf_counter()
    try:
        execute(job_class, payload)
    except BaseException as error:  # SystemExit from a job is a failure too, as in Sidekiq
        elapsed = _ms(started)
        outcome = failed(job_class, payload, error)
        logger.warning("fail", elapsed_ms=elapsed, error=f"{error_name(error)}: {error}",
                       then=outcome.action or ("discard" if outcome.failed else "drop"))
        return outcome
    if log.enabled(logging.INFO):
        logger.info("done", elapsed_ms=_ms(started))
    return retry.SUCCESS


def execute(job_class: type[jobs.Job], payload: dict[str, Any]) -> Any:
    """Rebuild the job from its payload and run it with its callbacks; raises what the job raises."""
    job = job_class()
    job.jid = payload["jid"]
    job.payload = payload
    job.queue_name = str(payload.get("queue") or job_class.queue)
    count = payload.get("retry_count")
    job.executions = count + 2 if isinstance(count, int) else 1
    with globalid.scope():  # records located for the job stay usable until it ends
        data = activejob.job_data(payload)
        if data is not None:
            job.arguments, job.kwargs = activejob.arguments(data)
        else:
            job.arguments = deserialize_args(payload["args"])
            kwargs = payload.get("kwargs")
            job.kwargs = deserialize_kwargs(kwargs) if kwargs else {}
        return job.execute()


def failed(job_class: type[jobs.Job], payload: dict[str, Any], error: BaseException) -> Outcome:
    """What a failure means: the class's discard_on/retry_on rules first, then its retry policy."""
    decision, delay = callbacks.decide(job_class, error, payload)
    if decision == "discard":
        return Outcome(failed=True)
    return retry.failure(payload, error_name(error), str(error), delay=delay if decision == "retry" else None,
                         error=error)


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
    return payload


def wrap_invalid(queue: str, raw: str, reason: str) -> dict[str, Any]:
    """A readable job hash that carries an unreadable payload into the dead set.

    Sidekiq's Web UI parses every dead entry, so the raw text travels as the
    only argument of a job hash rather than as the entry itself. Bytes that are
    not UTF-8 are kept exactly in ``raw_base64``.
    """
    now = time.time()
    data = raw.encode("utf-8", "surrogateescape")
    text = data.decode("utf-8", "replace")
    wrapped: dict[str, Any] = {
        "class": INVALID_CLASS,
        "args": [text],
        "jid": new_jid(),
        "queue": queue,
        "retry": False,
        "created_at": now,
        "error_class": "kiq.InvalidPayloadError",
        "error_message": reason,
        "failed_at": now,
        "retry_count": 0,
    }
    if text != raw:
        wrapped["raw_base64"] = base64.b64encode(data).decode()
    return wrapped


def _with_error(payload: dict[str, Any], error: Exception) -> dict[str, Any]:
    payload.update(error_class="kiq.UnknownJobError", error_message=str(error), failed_at=time.time())
    payload.setdefault("retry_count", 0)
    return payload


def error_name(error: BaseException) -> str:
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)

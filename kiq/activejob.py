"""Rails Active Job's Sidekiq payloads: run the ones Rails enqueues, and write them for Rails to run.

Rails' Sidekiq adapter pushes a Sidekiq job whose ``class`` is a wrapper and
whose only argument is the Active Job's own data: ``job_class``, ``job_id``,
``arguments`` (Active Job-tagged), ``executions`` and so on. kiq runs such a
payload as the registered job named by ``job_class``, and a kiq job class
with ``active_job = True`` is enqueued in that shape, so Rails runs it.

Keyword arguments travel as Active Job's: a last argument hash marked with
``_aj_ruby2_keywords``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from kiq.payload import ACTIVE_JOB_WRAPPER, stamp, wrapper_class
from kiq.serialize import deserialize, deserialize_args, serialize, serialize_args

WRAPPER = ACTIVE_JOB_WRAPPER  # what Rails' adapter and Sidekiq 6 and 7 write; 8 writes its own
KEYWORDS = "_aj_ruby2_keywords"


def arguments(data: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments from Active Job data."""
    raw = data.get("arguments")
    if not isinstance(raw, list):
        raise ValueError("Active Job data has no 'arguments' list")
    if raw and isinstance(raw[-1], dict) and KEYWORDS in raw[-1]:
        kwargs = deserialize(raw[-1])
        assert isinstance(kwargs, dict)
        return deserialize_args(raw[:-1]), kwargs
    return deserialize_args(raw), {}


def wrap(
    job_class: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    *,
    queue: str,
    retry: bool | int,
    jid: str,
    at: float | None,
    sidekiq_format: int | None = None,
) -> dict[str, Any]:
    """A Sidekiq payload that Rails' Active Job runs as ``job_class``, in the wrapper class and
    time format of ``sidekiq_format`` (the process's when None)."""
    now = time.time()
    created = stamp(now, sidekiq_format)
    serialized = serialize_args(args)
    if kwargs:
        marked = serialize(dict(kwargs))
        assert isinstance(marked, dict)
        marked[KEYWORDS] = list(kwargs)
        serialized.append(marked)
    data: dict[str, Any] = {
        "job_class": job_class,
        "job_id": str(uuid.uuid4()),
        "provider_job_id": None,
        "queue_name": queue,
        "priority": None,
        "arguments": serialized,
        "executions": 0,
        "exception_executions": {},
        "locale": "en",
        "timezone": "UTC",
        "enqueued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    payload: dict[str, Any] = {
        "class": wrapper_class(sidekiq_format),
        "wrapped": job_class,
        "queue": queue,
        "args": [data],
        "retry": retry,
        "jid": jid,
        "created_at": created,
    }
    if at is not None and at > now:
        payload["at"] = at
    else:
        payload["enqueued_at"] = created
    return payload

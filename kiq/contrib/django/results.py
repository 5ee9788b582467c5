"""Django task results in Redis: one hash per result, under ``Keys.task_result``.

The hash holds what Django's ``TaskResult`` reports: ``task`` (the task's module, name and
options), ``args`` and ``kwargs``, ``status``, the times (epoch seconds) ``enqueued_at``,
``started_at``, ``last_attempted_at`` and ``finished_at``, ``worker_ids`` and ``errors`` (JSON
lists, one entry per attempt and per failure) and ``return_value`` (JSON). Each write sets
it to expire ``ttl`` after (a scheduled or retried task's ``ttl`` counts from when it is due),
so results take no room for ever.

Three writes make a result: the enqueue (``READY``, with the push), the start of each attempt
(``RUNNING``) and its end (``SUCCESSFUL``, ``FAILED``, or ``READY`` again when kiq retries
it), each one call to Redis. The attempt's writes also fill in any field that is missing, so a
result that expired while its task waited comes back whole. Nothing here imports Django.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from kiq.keys import Keys

# Appends an encoded JSON value to the JSON list held in a field (absent or "[]" when empty).
APPEND = """
local function append(key, field, item)
  local list = redis.call('HGET', key, field)
  if not list or list == '[]' then
    list = '[' .. item .. ']'
  else
    list = string.sub(list, 1, -2) .. ',' .. item .. ']'
  end
  redis.call('HSET', key, field, list)
end
local function fill(key, from)
  for i = from, #ARGV, 2 do
    redis.call('HSETNX', key, ARGV[i], ARGV[i + 1])
  end
end
"""

# KEYS[1] the result; ARGV: ttl ms, now, the worker's id (JSON), then field/value pairs to
# write where missing. Returns the whole hash, which the task's context reports.
START = APPEND + """
local key = KEYS[1]
fill(key, 4)
redis.call('HSET', key, 'status', 'RUNNING', 'last_attempted_at', ARGV[2])
redis.call('HDEL', key, 'finished_at', 'return_value')  -- of a run before, retried from the dead set
redis.call('HSETNX', key, 'started_at', ARGV[2])
append(key, 'worker_ids', ARGV[3])
redis.call('PEXPIRE', key, ARGV[1])
return redis.call('HGETALL', key)
"""

# KEYS[1] the result; ARGV: ttl ms, status, finished_at ('' while the task may run again),
# the return value (JSON, or ''), the error (JSON, or ''), then field/value pairs to write
# where missing.
FINISH = APPEND + """
local key = KEYS[1]
fill(key, 6)
redis.call('HSET', key, 'status', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', key, 'finished_at', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', key, 'return_value', ARGV[4]) end
if ARGV[5] ~= '' then append(key, 'errors', ARGV[5]) end
redis.call('PEXPIRE', key, ARGV[1])
return 1
"""

EMPTY_LISTS = {"worker_ids": "[]", "errors": "[]"}


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Results:
    """Reads and writes the results of one Redis and namespace."""

    def __init__(self, conn: redis.Redis, keys: Keys, ttl: float) -> None:
        self.redis = conn
        self.keys = keys
        self.ttl = ttl
        self._start = conn.register_script(START)
        self._finish = conn.register_script(FINISH)

    def forget(self, result_id: str) -> None:
        """Delete a result (of a task whose push failed)."""
        self.redis.delete(self.keys.task_result(result_id))

    def enqueued(self, result_id: str, fields: Mapping[str, str], due_in: float = 0.0) -> None:
        """Write a new result (``READY``); it expires ``ttl`` after it is due."""
        pipe = self.redis.pipeline(transaction=True)
        key = self.keys.task_result(result_id)
        pipe.hset(key, mapping={**EMPTY_LISTS, **fields, "status": "READY"})  # type: ignore[dict-item]
        pipe.pexpire(key, self._ms(due_in))
        pipe.execute()

    def started(self, result_id: str, now: float, worker_id: str,
                fields: Mapping[str, str]) -> dict[str, str]:
        """Mark an attempt started by ``worker_id``; returns the whole result as it now is."""
        pairs = _pairs({**EMPTY_LISTS, **fields})
        flat = self._start(keys=[self.keys.task_result(result_id)],
                           args=[self._ms(0), repr(now), encode(worker_id), *pairs])
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def finished(self, result_id: str, status: str, now: float | None, *, return_value: str = "",
                 error: str = "", fields: Mapping[str, str] | None = None, due_in: float = 0.0) -> None:
        """Record an attempt's end: ``now`` is None for one that runs again (due in ``due_in``)."""
        pairs = _pairs({**EMPTY_LISTS, **(fields or {})})
        self._finish(keys=[self.keys.task_result(result_id)],
                     args=[self._ms(due_in), status, "" if now is None else repr(now), return_value, error,
                           *pairs])

    def load(self, result_id: str) -> dict[str, str]:
        """The result's fields, ``{}`` for none (never written, or expired)."""
        return self.redis.hgetall(self.keys.task_result(result_id))  # type: ignore[return-value]

    def _ms(self, due_in: float) -> int:
        return max(1, int((self.ttl + max(due_in, 0.0)) * 1000))


def _pairs(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]

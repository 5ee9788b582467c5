"""``KiqBackend``: Django's tasks framework enqueuing into kiq, whose workers run the tasks.

    TASKS = {
        "default": {
            "BACKEND": "kiq.contrib.django.KiqBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"redis_url": "redis://127.0.0.1:6379/0", "result_ttl": 86400},
        }
    }

``enqueue`` validates the task as the framework does (``validate_task``), checks the arguments
against the task's function and that they are JSON (the framework's ``normalize_json``): each
error raises in the caller, with nothing written. Then it writes the result (``READY``) and
pushes one kiq job (kiq.contrib.django.job) to the task's queue, or to kiq's schedule for a
``run_after``; the job's ``jid`` is the result's id. ``get_result`` reads the result back
from Redis (kiq.contrib.django.results).

What the framework's flags say: ``supports_defer`` (``run_after`` goes to kiq's schedule),
``supports_async_task`` (a coroutine task runs to completion on the worker's thread),
``supports_get_result``. Not ``supports_priority``: a kiq queue is first in, first out, so the
framework refuses a task with a priority other than 0 when it is defined or ``using()`` sets
one; queues and their weights (or ``strict`` order) in the workers' config are kiq's priorities.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured

from kiq.client import Client, payload_for
from kiq.connection import url_from_env
from kiq.contrib.django import framework
from kiq.contrib.django.convert import check_arguments, describe, moment, stored_fields, task_result
from kiq.contrib.django.job import DjangoTask
from kiq.contrib.django.results import Results
from kiq.keys import Keys
from kiq.payload import new_jid

DEFAULT_RESULT_TTL = 24 * 3600.0

_clients: dict[tuple[int, str, str], Client] = {}
_clients_lock = threading.Lock()


class KiqBackend(framework.BaseTaskBackend):  # type: ignore[misc]
    """Options (``OPTIONS``): ``redis_url`` (else ``KIQ_REDIS_URL``, ``REDIS_URL``, the local
    default), ``namespace`` (else ``KIQ_NAMESPACE``), ``result_ttl`` (seconds a result is kept
    after its last change, 86400), ``retry`` (kiq's retry option for the tasks' jobs: 0, the
    default, files a failed task in kiq's dead set at once; a number retries it that many
    times, ``True`` 25 times; ``False`` drops it)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = self.options
        self.retry: bool | int = options.get("retry", 0)
        if not (isinstance(self.retry, bool) or (type(self.retry) is int and self.retry >= 0)):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['retry'] is True, False or a number of "
                                       f"retries, not {self.retry!r}")
        self.client = _client(options.get("redis_url") or url_from_env(), options.get("namespace"))
        self.results = Results(self.client.redis, self.client.keys,
                               float(options.get("result_ttl", DEFAULT_RESULT_TTL)))

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        now = time.time()
        result = framework.TaskResult(
            task=task, id=new_jid(), status=framework.TaskResultStatus.READY,
            enqueued_at=moment(now), started_at=None, finished_at=None, last_attempted_at=None,
            args=args, kwargs=kwargs, backend=self.alias, errors=[], worker_ids=[],
        )  # normalize_json raises here for arguments that are not JSON
        check_arguments(task, args, kwargs)
        description = describe(task)
        at = task.run_after.timestamp() if task.run_after is not None else None
        payload = payload_for(DjangoTask, [description, result.args, result.kwargs], None, task.queue_name,
                              self.retry, at, jid=result.id)
        payload["display_class"] = task.module_path  # what Sidekiq's Web UI shows as the job's class
        self.results.enqueued(result.id, stored_fields(description, result.args, result.kwargs, now),
                              due_in=at - now if at is not None else 0.0)
        try:
            self.client.push(payload)
        except BaseException:
            with contextlib.suppress(redis.RedisError):  # the push's error is the one to report
                self.results.forget(result.id)
            raise
        framework.task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        fields = self.results.load(result_id)
        if "task" not in fields:
            raise framework.TaskResultDoesNotExist(result_id)
        return task_result(fields, result_id)


def _client(url: str, namespace: str | None) -> Client:
    """One kiq client per Redis, namespace and process: Django makes a backend per thread, and
    a worker forks after Django's setup."""
    key = (os.getpid(), url, Keys.using(namespace).namespace)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = Client(url, namespace)
        return client


"""The kiq job that runs a Django task in a worker, and the member of the server chain that
records how each attempt ended.

Every task enqueued through ``KiqBackend`` is one kiq job of class ``kiq.DjangoTask`` whose
arguments are the task's description (kiq.contrib.django.convert), its ``args`` and its
``kwargs``; the job's ``jid`` is the result's id. ``perform`` finds the task among those the
worker loaded, marks the result ``RUNNING`` (one call to Redis) and calls the task, with its
``TaskContext`` when it takes one.

How an attempt ended is kiq's decision, made after ``perform`` (retry, dead, or drop, by the
job's ``retry``: the backend's ``retry`` option), and only kiq's own members of the server
chain see it: ``TaskResults`` is one, and writes the end of the attempt in one call to Redis
(``SUCCESSFUL`` with the return value; ``READY`` with the error when kiq will try again;
``FAILED`` with the error when it will not). It writes from the worker's processor thread,
before kiq acknowledges the job, not in the acknowledgement's round trip: a result is written
even when a worker dies before its acknowledgement reaches Redis, and such a task runs again,
as every kiq job would.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections

from kiq import log, middleware
from kiq.contrib.django import framework
from kiq.contrib.django.convert import error_fields, find_task, moment, stored_fields, task_result
from kiq.contrib.django.results import Results, encode
from kiq.job import Job
from kiq.retry import Outcome

logger = log.get("kiq.django")


class DjangoTask(Job):
    """Runs one Django task: ``perform(description, args, kwargs)``."""

    job_name = "kiq.DjangoTask"
    retry = 0  # the backend's ``retry`` option sets each job's

    def __init__(self) -> None:
        super().__init__()
        self.results: Results | None = None
        self.fields: dict[str, str] = {}
        self.task_result: Any = None
        self.return_value = ""

    def perform(self, description: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        self.results = results_for(description)
        self.fields = stored_fields(description, args, kwargs, float(self.payload.get("created_at") or 0))
        task = find_task(description)
        record = self.results.started(self.jid, time.time(), worker_id(), self.fields)
        result = self.task_result = task_result(record, self.jid, task)
        framework.task_started.send(type(task.get_backend()), task_result=result)
        close_old_connections()  # as Django does around each request: CONN_MAX_AGE, broken connections
        try:
            if task.takes_context:
                value = task.call(framework.TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            self.return_value = encode(framework.normalize_json(value))
        finally:
            close_old_connections()

    def finish(self, outcome: Outcome) -> None:
        """Write how this attempt ended, as ``outcome`` says; one call to Redis."""
        description = self.payload["args"][0] if self.payload.get("args") else {}
        results = self.results or results_for(description)
        now = time.time()
        if not outcome.failed:
            status, finished, due_in = "SUCCESSFUL", now, 0.0
        elif outcome.action == "retry":
            status, finished, due_in = "READY", None, outcome.score - now
        else:
            status, finished, due_in = "FAILED", now, 0.0
        error = error_fields(outcome.error) if outcome.error is not None else None
        results.finished(self.jid, status, finished, return_value="" if outcome.failed else self.return_value,
                         error=encode(error) if error else "",
                         fields=self.fields or {"task": encode(description)}, due_in=due_in)
        self._finished_signal(status, finished, error, outcome.error)

    def _finished_signal(self, status: str, finished: float | None, error: dict[str, str] | None,
                         outcome_error: BaseException | None) -> None:
        result = self.task_result
        if result is None:  # the task never started: there is nothing to tell Django's signal
            return
        object.__setattr__(result, "status", framework.TaskResultStatus(status))
        if finished is not None:
            object.__setattr__(result, "finished_at", moment(finished))
        if error is not None:
            result.errors.append(framework.TaskError(**error))
        if status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", json.loads(self.return_value))
        sender = type(result.task.get_backend())
        if outcome_error is None:
            framework.task_finished.send(sender, task_result=result)
            return
        try:  # the framework sends it inside the handler of what the task raised, for its log line
            raise outcome_error
        except BaseException:
            framework.task_finished.send(sender, task_result=result)


class TaskResults(middleware.Middleware):
    """kiq's member of the server chain that writes a Django task's result when an attempt ends."""

    def around_perform(self, job: Job, call: Callable[[], Any]) -> Any:
        if type(job) is not DjangoTask:
            return call()
        outcome = call()
        try:
            job.finish(outcome)
        except Exception:  # Redis away, a backend gone from TASKS: the job's outcome stands
            logger.exception("could not record the end of the task's attempt")
        return outcome


def results_for(description: dict[str, Any]) -> Results:
    """The result store of the backend a task was enqueued through (its alias in ``TASKS``)."""
    alias = str(description.get("backend") or "default")
    results = getattr(framework.task_backends[alias], "results", None)
    if not isinstance(results, Results):
        raise TypeError(f"TASKS[{alias!r}] is not a kiq.contrib.django.KiqBackend in this worker")
    return results


def worker_id() -> str:
    """This worker process, as a result's ``worker_ids`` names it: ``hostname:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


middleware.add_builtin(TaskResults())

"""Between the tasks framework's objects and what kiq stores: a task's description in a job's
arguments, and a ``TaskResult`` from its hash in Redis (kiq.contrib.django.results).

A task is described by its function's module and name, the options ``using()`` may have
changed (queue, priority, ``run_after``) and the alias of its backend. Only a worker
rebuilds a task to run it, and it never imports a module for that: the task must already be
loaded (its module in ``require``, or an installed app's ``tasks`` module), as a kiq job class
must be registered, so a payload cannot make a worker import or call anything else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import inspect
import json
import sys
import traceback
from typing import Any

from django.conf import settings

from kiq.contrib.django import framework
from kiq.contrib.django.results import encode


class UnknownTaskError(LookupError):
    """A job names a task that is not loaded in this process."""


def describe(task: Any) -> dict[str, Any]:
    """What a job carries to rebuild ``task`` in a worker (plain JSON)."""
    return {
        "module": task.func.__module__,
        "name": task.func.__qualname__,
        "backend": task.backend,
        "queue_name": task.queue_name,
        "priority": task.priority,
        "run_after": task.run_after.timestamp() if task.run_after is not None else None,
    }


def find_task(description: dict[str, Any], importing: bool = False) -> Any:
    """The task a description names, with its options. A worker passes ``importing=False``:
    the task's module must already be loaded. Raises UnknownTaskError."""
    module_name, name = str(description.get("module")), str(description.get("name"))
    found: Any = sys.modules.get(module_name)
    if found is None and importing:
        found = importlib.import_module(module_name)
    for part in name.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, framework.Task):
        hint = ("add its module to the workers' require, or name it tasks.py in an installed app"
                if not importing else "was it renamed or moved since it was enqueued?")
        raise UnknownTaskError(f"no task {module_name}.{name} is loaded: {hint}")
    run_after = description.get("run_after")
    options = {
        "backend": str(description.get("backend") or found.backend),
        "queue_name": str(description.get("queue_name") or found.queue_name),
        "priority": int(description.get("priority") or 0),
        "run_after": moment(run_after) if isinstance(run_after, (int, float)) else None,
    }
    if all(getattr(found, option) == value for option, value in options.items()):
        return found
    return dataclasses.replace(found, **options)


def check_arguments(task: Any, args: Any, kwargs: Any) -> None:
    """Raise TypeError, as calling the task's function would, unless it takes these arguments:
    a misspelt keyword would otherwise fail only in a worker."""
    try:
        signature = inspect.signature(task.func)
    except (TypeError, ValueError):
        return
    leading = (None,) if task.takes_context else ()
    try:
        signature.bind(*leading, *args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{task.module_path}{signature}: {error}") from None


def stored_fields(description: dict[str, Any], args: Any, kwargs: Any, enqueued_at: float) -> dict[str, str]:
    """A new result's fields in Redis (results.Results)."""
    return {"task": encode(description), "args": encode(args), "kwargs": encode(kwargs),
            "enqueued_at": repr(enqueued_at)}


def task_result(fields: dict[str, str], result_id: str, task: Any | None = None) -> Any:
    """The ``TaskResult`` of a result's fields; ``task`` when the caller has it already."""
    description = json.loads(fields["task"])
    if task is None:
        task = find_task(description, importing=True)
    result = framework.TaskResult(
        task=task,
        id=result_id,
        status=framework.TaskResultStatus(fields.get("status", "READY")),
        enqueued_at=moment(fields.get("enqueued_at")),
        started_at=moment(fields.get("started_at")),
        finished_at=moment(fields.get("finished_at")),
        last_attempted_at=moment(fields.get("last_attempted_at")),
        args=json.loads(fields.get("args", "[]")),
        kwargs=json.loads(fields.get("kwargs", "{}")),
        backend=str(description.get("backend") or task.backend),
        errors=[framework.TaskError(exception_class_path=error["exception_class_path"],
                                    traceback=error["traceback"])
                for error in json.loads(fields.get("errors", "[]"))],
        worker_ids=json.loads(fields.get("worker_ids", "[]")),
    )
    if "return_value" in fields:
        object.__setattr__(result, "_return_value", json.loads(fields["return_value"]))
    return result


def moment(stamp: str | float | None) -> dt.datetime | None:
    """A stored time as Django's ``timezone.now()`` gives it: aware (UTC) with ``USE_TZ``, else
    naive local time."""
    if stamp is None or stamp == "":
        return None
    seconds = float(stamp)
    if settings.USE_TZ:
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return dt.datetime.fromtimestamp(seconds)


def error_fields(error: BaseException) -> dict[str, str]:
    """A ``TaskError``'s fields for what a task raised."""
    cls = type(error)
    return {"exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
            "traceback": "".join(traceback.format_exception(cls, error, error.__traceback__))}

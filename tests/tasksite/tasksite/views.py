"""Views that enqueue a task of taskapp.tasks and read results back, answering JSON.

POST a JSON body ``{"args": [...], "kwargs": {...}, "using": {...}}`` to ``enqueue/NAME``
(``aenqueue/NAME`` for an async view awaiting ``aenqueue``). ``using`` takes the framework's
options, with ``run_after_in`` (seconds from now) or ``naive_run_after`` for ``run_after``;
``"not_json": true`` appends an argument that is not JSON. An error the enqueue raises is
answered with status 400, its class and its message: it reached the view.
"""

import datetime as dt
import json

from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from taskapp import tasks
from taskapp.tasks import framework

from tasksite import othertasks


def enqueue(request: HttpRequest, name: str) -> JsonResponse:
    try:
        task, args, kwargs = _call(request, name)
        result = task.enqueue(*args, **kwargs)
    except Exception as error:
        return _error(error)
    return JsonResponse({"id": result.id, "status": result.status})


async def aenqueue(request: HttpRequest, name: str) -> JsonResponse:
    try:
        task, args, kwargs = _call(request, name)
        result = await task.aenqueue(*args, **kwargs)
    except Exception as error:
        return _error(error)
    return JsonResponse({"id": result.id, "status": result.status})


def result(request: HttpRequest, name: str, result_id: str) -> JsonResponse:
    """``name`` a task's (its ``get_result``), or ``-`` for the default backend's."""
    try:
        if name == "-":
            found = framework.default_task_backend.get_result(result_id)
        else:
            found = _task(name).get_result(result_id)
    except framework.exceptions.TaskResultDoesNotExist:
        return JsonResponse({"error": "TaskResultDoesNotExist"}, status=404)
    data = {
        "id": found.id,
        "status": found.status,
        "task": found.task.module_path,
        "queue_name": found.task.queue_name,
        "run_after": found.task.run_after and found.task.run_after.timestamp(),
        "backend": found.backend,
        "args": found.args,
        "kwargs": found.kwargs,
        "errors": [{"exception_class_path": e.exception_class_path, "traceback": e.traceback}
                   for e in found.errors],
        "worker_ids": found.worker_ids,
        "attempts": found.attempts,
        "is_finished": found.is_finished,
        **{when: getattr(found, when) and getattr(found, when).timestamp()
           for when in ("enqueued_at", "started_at", "last_attempted_at", "finished_at")},
    }
    if found.status == "SUCCESSFUL":
        data["return_value"] = found.return_value
    return JsonResponse(data)


def backend(request: HttpRequest) -> JsonResponse:
    chosen = framework.task_backends["default"]
    return JsonResponse({
        "framework": framework.__name__,
        "class": f"{type(chosen).__module__}.{type(chosen).__qualname__}",
        **{flag: getattr(chosen, flag) for flag in
           ("supports_defer", "supports_async_task", "supports_get_result", "supports_priority")},
    })


def _call(request: HttpRequest, name: str) -> tuple[object, list[object], dict[str, object]]:
    body = json.loads(request.body or b"{}")
    using = dict(body.get("using", {}))
    if "run_after_in" in using:
        using["run_after"] = timezone.now() + dt.timedelta(seconds=using.pop("run_after_in"))
    if using.pop("naive_run_after", False):
        using["run_after"] = dt.datetime.now() + dt.timedelta(seconds=60)
    task = _task(name)
    if using:
        task = task.using(**using)
    args = list(body.get("args", []))
    if body.get("not_json"):
        args.append(object())
    return task, args, dict(body.get("kwargs", {}))


def _task(name: str) -> object:
    return getattr(tasks, name, None) or getattr(othertasks, name)


def _error(error: Exception) -> JsonResponse:
    kind = type(error)
    return JsonResponse({"error": f"{kind.__module__}.{kind.__qualname__}", "message": str(error)},
                        status=400)

"""The tasks framework this Django has: ``django.tasks`` (Django 6 and later), else the
``django_tasks`` backport (Django 4.2 to 5.2).

Both define the same API under the same names, but for the error of an invalid task
(``InvalidTask`` in Django, ``InvalidTaskError`` in the backport) and where
``normalize_json`` lives; everything else of kiq's backend reads the framework from here.
When both are installed, Django's own wins: it is the one ``TASKS`` configures there.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def _load() -> tuple[ModuleType, str]:
    try:
        return importlib.import_module("django.tasks"), "django.tasks"
    except ImportError:
        pass
    try:
        return importlib.import_module("django_tasks"), "django_tasks"
    except ImportError as error:
        raise ImportError(
            "kiq.contrib.django needs Django's tasks framework: Django 6 or later, or "
            "`pip install django-tasks` (the backport, for Django 4.2 to 5.2)"
        ) from error


_module, NAME = _load()
"""``django.tasks`` or ``django_tasks``: which one this process uses."""

_backends: Any = importlib.import_module(f"{NAME}.backends.base")
_exceptions: Any = importlib.import_module(f"{NAME}.exceptions")
_signals: Any = importlib.import_module(f"{NAME}.signals")
_json: Any = importlib.import_module("django.utils.json" if NAME == "django.tasks" else "django_tasks.utils")

BaseTaskBackend: Any = _backends.BaseTaskBackend
Task: Any = _module.Task if hasattr(_module, "Task") else importlib.import_module(f"{NAME}.base").Task
TaskContext: Any = _module.TaskContext
TaskResult: Any = _module.TaskResult
TaskResultStatus: Any = _module.TaskResultStatus
TaskError: Any = importlib.import_module(f"{NAME}.base").TaskError
task_backends: Any = _module.task_backends
InvalidTask: type[Exception] = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
TaskResultDoesNotExist: type[Exception] = _exceptions.TaskResultDoesNotExist
task_enqueued: Any = _signals.task_enqueued
task_started: Any = _signals.task_started
task_finished: Any = _signals.task_finished
normalize_json: Any = _json.normalize_json

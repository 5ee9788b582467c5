"""The test project's tasks, written as any Django app writes them: kiq's workers find this
module as an installed app's ``tasks`` (kiq.contrib.django.setup)."""

import asyncio
import importlib
import time

try:
    framework = importlib.import_module("django.tasks")  # Django 6 and later
except ImportError:
    framework = importlib.import_module("django_tasks")  # the backport, Django 4.2 to 5.2
framework.exceptions = importlib.import_module(f"{framework.__name__}.exceptions")
task = framework.task


@task
def add(a, b):
    return a + b


@task
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


@task(queue_name="emails")
def send(to, subject="hello"):
    return {"to": to, "subject": subject}


@task
def fail(message):
    raise ValueError(message)


@task
def now():
    """When it ran, to compare with ``run_after``."""
    return time.time()


@task(takes_context=True)
def context_info(context, tag):
    return {"id": context.task_result.id, "attempt": context.attempt, "tag": tag,
            "status": context.task_result.status, "worker_ids": context.task_result.worker_ids}


@task(takes_context=True, backend="retrying")
def flaky(context):
    """Fails its first attempt; ``retrying``'s kiq jobs are retried once."""
    if context.attempt < 2:
        raise RuntimeError("the first attempt fails")
    return context.attempt

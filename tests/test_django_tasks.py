"""kiq as a backend of Django's tasks framework (kiq.contrib.django), end to end: the test
project in tests/tasksite served by Django's own ``runserver``, a real ``kiq start`` whose
workers load it through ``require: [kiq.contrib.django.setup]`` and ``DJANGO_SETTINGS_MODULE``,
and a private Redis. Every task is enqueued by a view, run by a worker, and its result read
back through a view.

``make test`` runs this file twice: on the default Python with Django 5.2 and the
``django-tasks`` backport, and on Python 3.12 with Django 6's ``django.tasks``, where
``KIQ_DJANGO_TASKS`` names the framework that must be in use.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTS, Kiq, RedisServer, sample_env, wait_for

from kiq.keys import Keys

pytest.importorskip("django")
if pytest.importorskip("importlib.util").find_spec("django.tasks") is None:
    pytest.importorskip("django_tasks", reason="Django before 6 needs the django-tasks backport (kiq[dev])")

pytestmark = pytest.mark.slow
SITE = TESTS / "tasksite"
KEYS = Keys()


class Site:
    """The test project, served by ``runserver`` on a free port."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def enqueue(self, name: str, *args: Any, view: str = "enqueue", **body: Any) -> str:
        status, answer = self.call(f"/{view}/{name}", {"args": list(args), **body})
        assert status == 200 and answer["status"] == "READY", answer
        return str(answer["id"])

    def result(self, name: str, result_id: str) -> dict[str, Any]:
        status, answer = self.call(f"/result/{name}/{result_id}")
        assert status == 200, answer
        return answer

    def finished(self, name: str, result_id: str, timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: (found := self.result(name, result_id))["is_finished"] and found,  # type: ignore[no-any-return]
                        timeout=timeout)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def django_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment ``kiq start`` and ``runserver`` inherit: the project on the path."""
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tasksite.settings")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def site(redis_server: RedisServer, tmp_path: Path, django_env: None) -> Iterator[Site]:
    from conftest import free_port

    port = free_port()
    log = open(tmp_path / "runserver.log", "wb")  # noqa: SIM115  closed below
    command = [sys.executable, "-m", "django", "runserver", "--noreload", f"127.0.0.1:{port}"]
    server = subprocess.Popen(command, cwd=SITE, env=sample_env(redis_server.url), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: server.poll() is not None or _listening(port), timeout=30)
        assert server.poll() is None, (tmp_path / "runserver.log").read_text()
        yield Site(port)
    finally:
        server.kill()
        server.wait(10)
        log.close()


@pytest.fixture
def worker(start_kiq: Any, django_env: None) -> Kiq:
    kiq: Kiq = start_kiq(require=["kiq.contrib.django.setup"], queues=["default", "emails"], concurrency=2)
    kiq.wait_workers(1)
    wait_for(lambda: "worker started" in kiq.log(), timeout=30)
    return kiq


def test_the_backend_says_what_it_supports(site: Site) -> None:
    status, answer = site.call("/backend")
    assert status == 200
    assert answer == {"framework": os.environ.get("KIQ_DJANGO_TASKS", answer["framework"]),
                      "class": "kiq.contrib.django.backend.KiqBackend",
                      "supports_defer": True, "supports_async_task": True, "supports_get_result": True,
                      "supports_priority": False}


def test_a_task_enqueued_by_a_view_runs_in_a_kiq_worker_and_its_result_is_read_back(
        site: Site, worker: Kiq, r: Any) -> None:
    result_id = site.enqueue("add", 2, 3)
    found = site.finished("add", result_id)
    assert found["status"] == "SUCCESSFUL" and found["return_value"] == 5
    assert found["args"] == [2, 3] and found["kwargs"] == {} and found["errors"] == []
    assert found["task"] == "taskapp.tasks.add" and found["backend"] == "default"
    assert found["enqueued_at"] <= found["started_at"] <= found["finished_at"]
    [worker_id] = found["worker_ids"]
    assert worker_id == f"{socket.gethostname()}:{worker.workers()[0]}"
    assert site.result("-", result_id) == found  # the backend's get_result, not through the task
    assert 0 < r.ttl(KEYS.task_result(result_id)) <= 600  # the project's result_ttl


def test_aenqueue_from_an_async_view_and_an_async_task(site: Site, worker: Kiq) -> None:
    result_id = site.enqueue("async_add", 3, 4, view="aenqueue")
    found = site.finished("async_add", result_id)
    assert (found["status"], found["return_value"]) == ("SUCCESSFUL", 7)


def test_a_task_that_raises_fails_with_its_error_and_goes_to_kiqs_dead_set(
        site: Site, worker: Kiq, r: Any) -> None:
    result_id = site.enqueue("fail", "boom")
    found = site.finished("fail", result_id)
    assert found["status"] == "FAILED" and "return_value" not in found
    [error] = found["errors"]
    assert error["exception_class_path"] == "builtins.ValueError"
    assert "ValueError: boom" in error["traceback"] and "taskapp/tasks.py" in error["traceback"]
    [dead] = r.zrange(KEYS.dead, 0, -1)  # retry 0, the backend's default: dead at once
    assert json.loads(dead)["jid"] == result_id


def test_the_frameworks_validation_errors_reach_the_view_and_nothing_is_enqueued(
        site: Site, r: Any) -> None:
    framework = site.call("/backend")[1]["framework"]
    invalid = {"django.tasks": "django.tasks.exceptions.InvalidTask",  # Django 6
               "django_tasks": "django_tasks.exceptions.InvalidTaskError"}[framework]
    cases = [
        ({"using": {"queue_name": "nope"}}, invalid, "Queue 'nope' is not valid for backend."),
        ({"using": {"priority": 5}}, invalid, "Backend does not support setting priority of tasks."),
        ({"using": {"naive_run_after": True}}, invalid, "run_after must be an aware datetime."),
        ({"args": [1], "not_json": True}, "builtins.TypeError", "Unsupported type"),
        ({"kwargs": {"c": 1}}, "builtins.TypeError", "unexpected keyword argument 'c'"),
        ({"args": [1]}, "builtins.TypeError", "missing a required argument: 'b'"),
    ]
    for body, error, message in cases:
        status, answer = site.call("/enqueue/add", {"args": [1, 2], **body})
        assert status == 400 and answer["error"] == error and message in answer["message"], (body, answer)
    assert r.keys("*") == []  # no job, no result


def test_run_after_waits_in_kiqs_schedule(site: Site, r: Any) -> None:
    result_id = site.enqueue("now", using={"run_after_in": 60})
    [(scheduled, due)] = r.zrange(KEYS.schedule, 0, -1, withscores=True)
    assert json.loads(scheduled)["jid"] == result_id and due > time.time() + 30
    waiting = site.result("now", result_id)
    assert waiting["status"] == "READY" and waiting["run_after"] == pytest.approx(due)
    assert r.pttl(KEYS.task_result(result_id)) > 600_000  # result_ttl from when it is due


def test_a_task_with_run_after_runs_once_it_is_due(site: Site, worker: Kiq) -> None:
    result_id = site.enqueue("now", using={"run_after_in": 1})
    due = site.result("now", result_id)["run_after"]
    found = site.finished("now", result_id)
    assert found["status"] == "SUCCESSFUL"
    assert found["return_value"] >= due and found["started_at"] >= due
    assert found["run_after"] == pytest.approx(due)


def test_queue_name_is_the_kiq_queue(site: Site, r: Any) -> None:
    result_id = site.enqueue("send", "ops@example.com")
    [payload] = r.lrange(KEYS.queue("emails"), 0, -1)
    job = json.loads(payload)
    assert (job["jid"], job["queue"], job["class"], job["display_class"]) == (
        result_id, "emails", "kiq.DjangoTask", "taskapp.tasks.send")
    assert site.result("send", result_id)["queue_name"] == "emails"


def test_a_task_that_takes_context_gets_its_result_and_attempt(site: Site, worker: Kiq) -> None:
    result_id = site.enqueue("context_info", "x")
    found = site.finished("context_info", result_id)
    assert found["return_value"] == {"id": result_id, "attempt": 1, "tag": "x", "status": "RUNNING",
                                     "worker_ids": found["worker_ids"]}


def test_a_failed_attempt_kiq_retries_is_ready_again_then_succeeds(site: Site, worker: Kiq, r: Any) -> None:
    result_id = site.enqueue("flaky")
    waiting = wait_for(lambda: (found := site.result("flaky", result_id))["errors"] and found)
    assert waiting["status"] == "READY" and not waiting["is_finished"]
    assert waiting["errors"][0]["exception_class_path"] == "builtins.RuntimeError"
    [retry] = wait_for(lambda: r.zrange(KEYS.retry, 0, -1))
    r.zadd(KEYS.retry, {retry: time.time()}, xx=True)  # due now rather than after kiq's backoff
    r.publish(KEYS.schedule_channel, str(time.time()))
    found = site.finished("flaky", result_id)
    assert (found["status"], found["return_value"], found["attempts"]) == ("SUCCESSFUL", 2, 2)
    assert len(found["errors"]) == 1


def test_an_unknown_result_id_does_not_exist(site: Site) -> None:
    assert site.call("/result/add/0123456789abcdef01234567") == (404, {"error": "TaskResultDoesNotExist"})


def test_a_failed_task_retried_from_kiqs_dead_set_runs_again_under_the_same_result(
        site: Site, worker: Kiq, redis_server: RedisServer) -> None:
    from kiq.api import API

    result_id = site.enqueue("flaky", using={"backend": "default"})  # retry 0: dead at its first failure
    failed = site.finished("flaky", result_id)
    assert failed["status"] == "FAILED" and failed["attempts"] == 1
    dead = API(redis_server.url).dead
    assert dead.retry([dead.find(result_id)]) == 1
    found = wait_for(lambda: (again := site.result("flaky", result_id))["status"] == "SUCCESSFUL" and again)
    assert (found["return_value"], found["attempts"], len(found["errors"])) == (2, 2, 1)
    assert found["finished_at"] > failed["finished_at"]


def test_a_worker_runs_no_task_it_did_not_load(site: Site, worker: Kiq) -> None:
    """kiq never imports a module a payload names: a task outside the installed apps' ``tasks``
    modules and the workers' ``require`` fails, and its result says why."""
    result_id = site.enqueue("elsewhere")
    found = site.finished("elsewhere", result_id)
    assert found["status"] == "FAILED" and found["attempts"] == 0
    [error] = found["errors"]
    assert error["exception_class_path"] == "kiq.contrib.django.convert.UnknownTaskError"
    assert "no task tasksite.othertasks.elsewhere is loaded" in error["traceback"]

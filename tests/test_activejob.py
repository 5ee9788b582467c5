"""Rails Active Job's Sidekiq payloads: kiq runs what Rails enqueues and writes what Rails runs."""

from __future__ import annotations

import datetime as dt
import json

import pytest

import kiq
from kiq import activejob, adapters
from kiq.processor import handle, prepare
from kiq.retry import Outcome

received: list[tuple[list, dict]] = []

# What Rails 6.1's Sidekiq adapter pushes for
# AjEchoJob.perform_later(1, "two", {"k" => [3]}, at: Time, size: "l")
RAILS_PAYLOAD = {
    "class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",
    "wrapped": "AjEchoJob",
    "queue": "default",
    "args": [{
        "job_class": "AjEchoJob",
        "job_id": "0f0c8a46-5a4c-4b8e-9b9b-2f6a4d3c2b1a",
        "provider_job_id": None,
        "queue_name": "default",
        "priority": None,
        "arguments": [
            1, "two", {"k": [3], "_aj_symbol_keys": []},
            {"at": {"_aj_serialized": "ActiveJob::Serializers::TimeWithZoneSerializer",
                    "value": "2026-11-29T13:27:21.123456789Z"},
             "size": "l", "_aj_ruby2_keywords": ["at", "size"]},
        ],
        "executions": 0,
        "exception_executions": {},
        "locale": "en",
        "timezone": "UTC",
        "enqueued_at": "2026-11-29T13:27:21Z",
    }],
    "retry": True,
    "jid": "a" * 24,
    "created_at": 1795959241.1,
    "enqueued_at": 1795959241.1,
}


class AjEchoJob(kiq.Job):
    active_job = True

    def perform(self, *args, **kwargs) -> None:
        received.append((list(args), kwargs))


@pytest.fixture(autouse=True)
def clean():
    received.clear()
    yield
    adapters.use("redis")


def test_a_rails_payload_runs_as_the_python_job_of_that_name():
    prepared = prepare("default", json.dumps(RAILS_PAYLOAD))
    assert not isinstance(prepared, Outcome)
    job_class, payload = prepared
    assert job_class is AjEchoJob
    assert handle(job_class, payload, "default").failed is False
    [(args, kwargs)] = received
    assert args == [1, "two", {"k": [3]}]
    at = dt.datetime(2026, 11, 29, 13, 27, 21, 123456, tzinfo=dt.timezone.utc)
    assert kwargs == {"at": at, "size": "l"}


def test_an_unknown_wrapped_class_is_retried_naming_it():
    payload = json.loads(json.dumps(RAILS_PAYLOAD))
    payload["args"][0]["job_class"] = "Nope::Job"
    outcome = prepare("default", json.dumps(payload))
    assert isinstance(outcome, Outcome) and outcome.action == "retry"
    assert "Nope::Job" in json.loads(outcome.payload)["error_message"]


def test_active_job_classes_are_enqueued_in_rails_shape(client, r):
    job = AjEchoJob.set(queue="mailers").perform_later(5, {"a": 1}, when=dt.date(2026, 1, 2))
    [raw] = r.lrange("queue:mailers", 0, -1)
    payload = json.loads(raw)
    assert payload["class"] == activejob.WRAPPER and payload["wrapped"] == "AjEchoJob"
    assert payload["jid"] == job.jid and payload["queue"] == "mailers"
    assert (job.job_class, job.queue) == ("AjEchoJob", "mailers")  # the job's name, not Rails' wrapper
    [data] = payload["args"]
    assert data["job_class"] == "AjEchoJob" and data["queue_name"] == "mailers"
    assert data["arguments"][:2] == [5, {"a": 1}]
    assert data["arguments"][2] == {
        "when": {"_aj_serialized": "ActiveJob::Serializers::DateSerializer", "value": "2026-01-02"},
        "_aj_ruby2_keywords": ["when"],
    }
    prepared = prepare("mailers", raw)
    assert not isinstance(prepared, Outcome)
    handle(*prepared, "mailers")
    assert received == [([5, {"a": 1}], {"when": dt.date(2026, 1, 2)})]


def test_scheduled_active_job_payload_has_at():
    adapter = adapters.use("test")
    AjEchoJob.set(wait=60).perform_later()
    [payload] = adapter.enqueued
    assert payload["class"] == activejob.WRAPPER and "at" in payload and "enqueued_at" not in payload

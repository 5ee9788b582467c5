"""Unit tests for kiq.processor: running a payload and deciding between success, retry, dead and drop."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

import kiq
from kiq.client import build_payload
from kiq.processor import INVALID_CLASS, process
from kiq.retry import SUCCESS

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


class ProcRecordJob(kiq.Job):
    def perform(self, *args: Any, **kwargs: Any) -> None:
        CALLS.append((self.jid, args, kwargs))


class ProcFailError(Exception):
    pass


class ProcFailJob(kiq.Job):
    def perform(self, message: str) -> None:
        raise ProcFailError(message)


class ProcBuiltinFailJob(kiq.Job):
    def perform(self) -> None:
        raise ValueError("builtin failure")


class ProcNoRetryJob(kiq.Job):
    retry = False

    def perform(self) -> None:
        raise RuntimeError("dropped")


class ProcStraightToDeadJob(kiq.Job):
    retry = 0

    def perform(self) -> None:
        raise RuntimeError("to the morgue")


class ProcExitJob(kiq.Job):
    def perform(self) -> None:
        raise SystemExit(3)


@pytest.fixture(autouse=True)
def calls() -> Iterator[list[tuple[str, tuple[Any, ...], dict[str, Any]]]]:
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def raw(job_class: str, args: list[Any], kwargs: dict[str, Any] | None = None, **fields: Any) -> str:
    payload = build_payload(job_class, args, kwargs)
    payload.update(fields)
    return json.dumps(payload)


# Success


def test_valid_payload_runs_the_job_with_its_arguments(calls):
    text = raw("ProcRecordJob", [1, "two", [3]], {"size": "large"})
    outcome = process("default", text)
    assert outcome == SUCCESS
    assert calls == [(json.loads(text)["jid"], (1, "two", [3]), {"size": "large"})]


def test_arguments_are_deserialized(calls):
    when = dt.datetime(2030, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    text = raw("ProcRecordJob", [when, Decimal("1.50"), (1, 2)], {"at": dt.date(2030, 1, 1), "tags": {"a"}})
    assert process("default", text) == SUCCESS
    [(_, args, kwargs)] = calls
    assert args == (when, Decimal("1.50"), (1, 2))
    assert kwargs == {"at": dt.date(2030, 1, 1), "tags": {"a"}}


def test_sidekiq_payload_without_kwargs_field(calls):
    text = json.dumps({"class": "ProcRecordJob", "args": [1], "jid": "b" * 24, "queue": "default",
                       "retry": True, "created_at": 1.0, "enqueued_at": 2.0})
    assert process("default", text) == SUCCESS
    assert calls == [("b" * 24, (1,), {})]


# Failures


def test_exception_gives_a_retry_outcome_with_sidekiq_fields():
    text = raw("ProcFailJob", ["it broke"])
    before = time.time()
    outcome = process("default", text)
    after = time.time()
    assert outcome.failed and outcome.action == "retry"
    payload = json.loads(outcome.payload)
    assert payload["error_class"] == f"{ProcFailError.__module__}.ProcFailError"
    assert payload["error_message"] == "it broke"
    assert payload["retry_count"] == 0
    assert before <= payload["failed_at"] <= after
    assert "retried_at" not in payload
    assert payload["failed_at"] + 15 <= outcome.score <= payload["failed_at"] + 24
    original = json.loads(text)
    assert {k: payload[k] for k in original} == original


def test_builtin_exception_class_is_named_without_module():
    outcome = process("default", raw("ProcBuiltinFailJob", []))
    assert json.loads(outcome.payload)["error_class"] == "ValueError"


def test_repeated_failure_counts_up():
    first = process("default", raw("ProcFailJob", ["x"]))
    second = process("default", first.payload)
    payload = json.loads(second.payload)
    assert payload["retry_count"] == 1
    assert payload["failed_at"] == json.loads(first.payload)["failed_at"]
    assert payload["retried_at"] >= payload["failed_at"]


def test_retry_false_job_is_dropped():
    outcome = process("default", raw("ProcNoRetryJob", [], retry=False))
    assert outcome.failed and outcome.action == "" and outcome.payload == ""


def test_retry_zero_job_goes_to_dead():
    outcome = process("default", raw("ProcStraightToDeadJob", [], retry=0))
    assert outcome.action == "dead"
    assert json.loads(outcome.payload)["error_message"] == "to the morgue"


def test_arguments_that_cannot_be_loaded_fail_the_job():
    payload = build_payload("ProcRecordJob", [])
    payload["args"] = [{"_aj_serialized": "NoSuchSerializer", "value": 1}]
    text = json.dumps(payload)
    outcome = process("default", text)
    assert outcome.action == "retry"
    payload = json.loads(outcome.payload)
    assert payload["error_class"] == "kiq.serialize.DeserializationError"
    assert "NoSuchSerializer" in payload["error_message"]


def test_job_calling_sys_exit_is_a_failure_not_an_escape():
    try:
        outcome = process("default", raw("ProcExitJob", []))
    except SystemExit:
        pytest.fail("SystemExit escaped process()")
    assert outcome.failed and outcome.action == "retry"
    assert json.loads(outcome.payload)["error_class"] == "SystemExit"


# Payloads that cannot run


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json at all", "not valid JSON"),
        ('{"class": "ProcRecordJob", "args": [', "not valid JSON"),
        ('["ProcRecordJob", 1]', "not a JSON object"),
        ('"just a string"', "not a JSON object"),
        ('{"args": [], "jid": "x"}', "'class'"),
        ('{"class": "", "args": [], "jid": "x"}', "'class'"),
        ('{"class": 5, "args": [], "jid": "x"}', "'class'"),
        ('{"class": "ProcRecordJob", "jid": "x"}', "'args'"),
        ('{"class": "ProcRecordJob", "args": "1,2", "jid": "x"}', "'args'"),
        ('{"class": "ProcRecordJob", "args": {"a": 1}, "jid": "x"}', "'args'"),
        ('{"class": "ProcRecordJob", "args": []}', "'jid'"),
        ('{"class": "ProcRecordJob", "args": [], "jid": 7}', "'jid'"),
        ('{"class": "ProcRecordJob", "args": [], "jid": "x", "kwargs": [1]}', "'kwargs'"),
        ('{"class": "ProcRecordJob", "args": [], "jid": "x"} trailing', "not valid JSON"),
        ('{"class": "ProcRecordJob", "args": [], "jid": "x"}{}', "not valid JSON"),
    ],
    ids=["garbage", "truncated", "array", "string", "no-class", "empty-class", "int-class", "no-args",
         "string-args", "object-args", "no-jid", "int-jid", "list-kwargs", "trailing-text", "two-documents"],
)
def test_invalid_payload_goes_to_dead_wrapped(calls, text, reason):
    before = time.time()
    outcome = process("critical", text)
    assert calls == []
    assert outcome.failed and outcome.action == "dead"
    assert before <= outcome.score <= time.time()
    wrapped = json.loads(outcome.payload)
    assert wrapped["class"] == INVALID_CLASS == "kiq.InvalidPayload"
    assert wrapped["args"] == [text]
    assert reason in wrapped["error_message"]
    assert wrapped["queue"] == "critical"
    assert wrapped["retry"] is False
    assert len(wrapped["jid"]) == 24
    assert "error_class" in wrapped and "failed_at" in wrapped
    assert "raw_base64" not in wrapped


def test_whitespace_around_a_payload_is_still_json(calls):
    for text in (f" {raw('ProcRecordJob', [1])}", f"{raw('ProcRecordJob', [2])}\r\n\t "):
        assert process("default", text) == SUCCESS
    assert [args for _, args, _ in calls] == [(1,), (2,)]


def test_payload_that_is_not_utf8_keeps_its_bytes():
    data = b'{"class": "\xff\xfe"}'
    text = data.decode("utf-8", "surrogateescape")
    outcome = process("default", text)
    wrapped = json.loads(outcome.payload)
    assert outcome.action == "dead"
    assert wrapped["class"] == "kiq.InvalidPayload"
    assert base64.b64decode(wrapped["raw_base64"]) == data
    assert wrapped["args"] == [data.decode("utf-8", "replace")]


def test_deeply_nested_json_is_invalid_not_a_crash():
    text = "[" * 100_000 + "]" * 100_000
    outcome = process("default", text)
    assert outcome.action == "dead"
    assert json.loads(outcome.payload)["class"] == "kiq.InvalidPayload"


def test_unregistered_class_goes_to_dead_with_the_payload_intact(calls):
    text = raw("Ruby::OnlyInRailsJob", [1, {"a": [2]}], {"k": "v"}, custom_field=[1, {}])
    outcome = process("default", text)
    assert calls == []
    assert outcome.failed and outcome.action == "dead"
    payload = json.loads(outcome.payload)
    assert payload["error_class"] == "kiq.UnknownJobError"
    assert "Ruby::OnlyInRailsJob" in payload["error_message"]
    assert payload["retry_count"] == 0
    assert payload["failed_at"] <= time.time()
    original = json.loads(text)
    assert {k: payload[k] for k in original} == original
    assert set(payload) - set(original) == {"error_class", "error_message", "failed_at", "retry_count"}

"""Unit tests for kiq.processor: running a payload and deciding between success, retry, dead and drop."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import process

import kiq
from kiq.callbacks import retry_on
from kiq.client import build_payload
from kiq.payload import INVALID_CLASS
from kiq.processor import prepare, unhandled
from kiq.retry import SUCCESS, Outcome

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


class ProcQueueJob(kiq.Job):
    def perform(self) -> None:
        CALLS.append((self.jid, (self.queue_name,), {}))


def test_in_a_worker_queue_name_is_the_queue_the_job_was_taken_from(calls):
    """Not whatever the payload's ``queue`` field says: kiq's members label lines and metrics
    with it, and those labels must stay few."""
    text = raw("ProcQueueJob", [], queue="made-up-by-whoever-wrote-this")
    assert process("default", text) == SUCCESS
    assert [args for _, args, _ in calls] == [("default",)]


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


def test_a_payload_without_queue_or_retry_is_retried_as_sidekiq_retries_it():
    """Written by hand or by another client: the retry goes to the queue the job was taken from
    (not "default"), and its class's retry option applies (Sidekiq reads its job class's)."""
    bare = {"class": "ProcStraightToDeadJob", "args": [], "jid": "0" * 24}
    outcome = process("mail", json.dumps(bare))
    assert outcome.action == "dead"  # the class's retry = 0, not 25 retries
    payload = json.loads(outcome.payload)
    assert (payload["queue"], payload["retry"]) == ("mail", 0)
    bare["class"] = "ProcBuiltinFailJob"
    outcome = process("mail", json.dumps(bare))
    assert outcome.action == "retry" and json.loads(outcome.payload)["queue"] == "mail"
    moved = process("low", raw("ProcBuiltinFailJob", [], queue="high"))  # a job moved by hand
    assert json.loads(moved.payload)["queue"] == "low"
    elsewhere = process("low", raw("ProcBuiltinFailJob", [], queue="high", retry_queue="slow"))
    assert json.loads(elsewhere.payload)["queue"] == "slow"


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


@pytest.mark.parametrize("options", [{"retry": False}, {"retry": 0}, {"dead": False, "retry": 0},
                                     {"retry_for": 1, "failed_at": 1.0, "retry_count": 0}])
def test_an_unregistered_class_is_kept_whatever_its_own_retry_options_say(calls, options):
    """A Ruby job with ``retry: false`` on a queue kiq shares with Sidekiq was dropped (with
    ``retry: 0``, killed) by the worker that could not run it: those options are the job's
    class's to apply, where it runs."""
    outcome = process("default", raw("RubyOnly", [1], None, **options))
    assert calls == [] and outcome.action == "retry"
    payload = json.loads(outcome.payload)
    assert {key: payload[key] for key in options if key != "retry_count"} == {
        key: value for key, value in options.items() if key != "retry_count"}  # kept for the class


def test_deeply_nested_json_is_invalid_not_a_crash():
    text = "[" * 100_000 + "]" * 100_000
    outcome = process("default", text)
    assert outcome.action == "dead"
    assert json.loads(outcome.payload)["class"] == "kiq.InvalidPayload"


def test_unregistered_class_is_retried_with_the_payload_intact(calls):
    text = raw("Ruby::OnlyInRailsJob", [1, {"a": [2]}], {"k": "v"}, custom_field=[1, {}])
    before = time.time()
    outcome = process("default", text)
    assert calls == []
    assert outcome.failed and outcome.action == "retry"
    assert outcome.score >= before + 15  # Sidekiq's backoff, as for a job that raised NameError
    payload = json.loads(outcome.payload)
    assert payload["error_class"] == "kiq.UnknownJobError"
    assert "Ruby::OnlyInRailsJob" in payload["error_message"]
    assert "require" in payload["error_message"]
    assert payload["retry_count"] == 0
    original = json.loads(text)
    assert {k: payload[k] for k in original} == original
    assert set(payload) - set(original) == {"error_class", "error_message", "failed_at", "retry_count"}


def test_unregistered_class_goes_to_dead_after_the_default_retries(calls):
    text = raw("Ruby::OnlyInRailsJob", [1], retry=2, retry_count=23)  # its own 2 are its class's
    assert process("default", text).action == "retry"
    outcome = process("default", raw("Ruby::OnlyInRailsJob", [1], retry=2, retry_count=24, dead=False))
    assert outcome.action == "dead"  # never dropped: dead: false is its class's too
    assert json.loads(outcome.payload)["retry_count"] == 25


# Failures that would break the failure handling itself


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class ProcUnprintableJob(kiq.Job):
    def perform(self) -> None:
        raise UnprintableError


class ProcBadModuleError(Exception):
    pass


ProcBadModuleError.__module__ = None  # type: ignore[assignment]


class ProcBadModuleJob(kiq.Job):
    def perform(self) -> None:
        raise ProcBadModuleError("odd class")


def _waits_badly(executions: int) -> float:
    raise ZeroDivisionError("wait callable broke")


@retry_on(ProcFailError, wait=_waits_badly)
class ProcBadWaitJob(kiq.Job):
    def perform(self) -> None:
        raise ProcFailError("retry me")


@retry_on(ProcFailError, wait=lambda n: float("nan"))
class ProcNanWaitJob(kiq.Job):
    def perform(self) -> None:
        raise ProcFailError("nan wait")


@retry_on(ProcFailError, wait=lambda n: -1)
class ProcNegativeWaitNoRetryJob(kiq.Job):
    retry = False

    def perform(self) -> None:
        raise ProcFailError("negative wait")


@retry_on(ProcFailError, attempts=3)
class ProcCountedJob(kiq.Job):
    def perform(self) -> None:
        raise ProcFailError("counted")


def test_error_whose_str_raises_still_fails_the_job_with_its_type_name():
    outcome = process("default", raw("ProcUnprintableJob", []))
    assert outcome.action == "retry"
    payload = json.loads(outcome.payload)
    assert payload["error_class"].endswith("UnprintableError")
    assert "UnprintableError" in payload["error_message"] and "str() raised" in payload["error_message"]


def test_error_class_without_a_module_string_is_named():
    payload = json.loads(process("default", raw("ProcBadModuleJob", [])).payload)
    assert payload["error_class"] == "ProcBadModuleError"


def test_retry_on_wait_that_raises_falls_back_to_the_retry_policy():
    before = time.time()
    outcome = process("default", raw("ProcBadWaitJob", []))
    assert outcome.action == "retry" and outcome.score >= before + 15
    assert json.loads(outcome.payload)["error_message"] == "retry me"


def test_retry_on_wait_that_is_not_a_number_of_seconds_falls_back_to_the_backoff():
    before = time.time()
    outcome = process("default", raw("ProcNanWaitJob", []))
    assert outcome.action == "retry" and before + 15 <= outcome.score < before + 1000


def test_a_bad_wait_leaves_the_retry_policy_to_decide_and_says_so(capsys):
    """A wait of -1 is none: the job's own ``retry`` (False: drop) decides, and a line says why
    (the job was dropped without one)."""
    outcome = process("default", raw("ProcNegativeWaitNoRetryJob", [], retry=False))
    assert outcome.failed and outcome.action == ""  # dropped
    captured = capsys.readouterr()
    assert "a retry_on wait gave no number of seconds" in captured.out + captured.err


@pytest.mark.parametrize("counts", [{"[ProcFailError]": "x"}, {"[ProcFailError]": [1]},
                                    {"[ProcFailError]": 1e400}, {"[ProcFailError]": -4}, "nonsense"])
def test_crafted_exception_executions_count_as_a_first_failure(counts):
    outcome = process("default", raw("ProcCountedJob", [], exception_executions=counts))
    assert outcome.action == "retry"
    assert json.loads(outcome.payload)["exception_executions"]["[ProcFailError]"] == 1


@pytest.mark.parametrize("count", [10**80, -(10**80), 2**63])
def test_crafted_retry_count_ends_in_the_dead_set_or_a_retry_not_an_overflow(count):
    outcome = process("default", raw("ProcFailJob", ["x"], retry=10**90, retry_count=count))
    assert outcome.action in ("retry", "dead")
    assert outcome.score < time.time() + 10**11
    json.loads(outcome.payload)


def test_unknown_class_nested_too_deep_to_write_back_goes_to_dead_as_it_came():
    """The deepest payload kiq can read, in a thread as fresh as a processor's, is too deep to
    write back from the retry code further down the stack (RecursionError there, up to Python
    3.12): the processor thread hands it to ``unhandled``, which files it in the dead set as it
    came (tests/test_hostile.py sends such payloads to real workers). Python 3.13 writes back
    whatever it reads: there the job is filed as any unknown class."""

    def prepared(depth: int) -> tuple[str, Outcome | RecursionError]:
        nested = "[" * depth + "]" * depth
        text = '{"class": "Nope", "args": [' + nested + '], "jid": "0123456789abcdef01234567"}'
        try:
            return text, prepare("default", text)
        except RecursionError as error:
            return text, error

    def deepest_readable() -> tuple[str, Outcome | RecursionError]:
        readable, unreadable = 1, 100_000
        while unreadable - readable > 1:
            depth = (readable + unreadable) // 2
            got = prepared(depth)[1]
            if isinstance(got, Outcome) and '"error_class":"kiq.InvalidPayloadError"' in got.payload:
                unreadable = depth
            else:
                readable = depth
        return prepared(readable)

    results: list[tuple[str, Outcome | RecursionError]] = []
    thread = threading.Thread(target=lambda: results.append(deepest_readable()))
    thread.start()
    thread.join()
    [(text, got)] = results
    if isinstance(got, Outcome):
        assert sys.version_info >= (3, 13)
        assert '"error_class":"kiq.UnknownJobError"' in got.payload  # too deep for json.loads here
        got = RecursionError("maximum recursion depth exceeded")
    outcome = unhandled("default", text, got)
    assert outcome.action == "dead"
    wrapped = json.loads(outcome.payload)
    assert wrapped["args"] == [text]
    assert wrapped["error_class"] == "kiq.UnhandledJobError"
    assert "RecursionError" in wrapped["error_message"]

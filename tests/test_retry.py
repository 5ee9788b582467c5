"""Unit tests for kiq.retry: Sidekiq's backoff, retry limits and failure fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiq import retry
from kiq.retry import DEFAULT_MAX_RETRIES, MAX_MESSAGE, Outcome, backoff, dead, failure, max_retries

NOW = 1_700_000_000.5


def job(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"class": "SomeJob", "args": [1], "jid": "a" * 24, "queue": "default",
                            "retry": True, "created_at": NOW - 100, "enqueued_at": NOW - 90}
    base.update(fields)
    return base


# Backoff


@pytest.mark.parametrize("count", [0, 1, 2, 5, 10, 24])
def test_backoff_is_sidekiqs_window(count):
    base = count**4 + 15
    allowed = {base + jitter * (count + 1) for jitter in range(10)}
    samples = {backoff(count) for _ in range(400)}
    assert samples <= allowed
    # 400 draws of rand(10) miss one of its values with probability ~1e-17: the whole window is used.
    assert samples == allowed
    assert min(samples) == base and max(samples) == base + 9 * (count + 1)


def test_backoff_grows_with_the_count():
    assert backoff(0) <= 24
    assert 24**4 + 15 <= backoff(24) <= 24**4 + 15 + 9 * 25


# Limits


@pytest.mark.parametrize(
    ("value", "limit"),
    [(True, DEFAULT_MAX_RETRIES), (False, None), (None, None), (10, 10), (1, 1), (0, 0), (-3, 0)],
)
def test_max_retries(value, limit):
    assert max_retries(value) == limit


def test_default_is_twenty_five():
    assert DEFAULT_MAX_RETRIES == 25


# failure()


def test_first_failure_sets_failed_at_and_count_zero():
    payload = job()
    outcome = failure(payload, "ValueError", "bad value", now=NOW)
    assert payload["failed_at"] == NOW
    assert payload["retry_count"] == 0
    assert payload["error_class"] == "ValueError"
    assert payload["error_message"] == "bad value"
    assert "retried_at" not in payload
    assert outcome.failed and outcome.action == "retry"
    assert NOW + 15 <= outcome.score <= NOW + 24
    assert json.loads(outcome.payload) == payload


def test_later_failure_keeps_failed_at_sets_retried_at_and_counts():
    payload = job(failed_at=NOW - 500, retry_count=0, error_class="ValueError", error_message="first")
    outcome = failure(payload, "KeyError", "second", now=NOW)
    assert payload["failed_at"] == NOW - 500
    assert payload["retried_at"] == NOW
    assert payload["retry_count"] == 1
    assert (payload["error_class"], payload["error_message"]) == ("KeyError", "second")
    assert outcome.action == "retry"
    assert NOW + 1 + 15 <= outcome.score <= NOW + 1 + 15 + 9 * 2
    assert (outcome.score - NOW - 16) % 2 == 0

    again = failure(payload, "KeyError", "third", now=NOW + 100)
    assert payload["retry_count"] == 2
    assert payload["retried_at"] == NOW + 100
    assert payload["failed_at"] == NOW - 500
    assert NOW + 100 + 16 + 15 <= again.score <= NOW + 100 + 16 + 15 + 27


def test_the_rest_of_the_payload_is_kept():
    payload = job(kwargs={"size": "large"}, custom={"nested": [1, 2.5, None]})
    outcome = failure(payload, "E", "m", now=NOW)
    written = json.loads(outcome.payload)
    for field in ("class", "args", "jid", "queue", "retry", "created_at", "enqueued_at", "kwargs", "custom"):
        assert written[field] == job(kwargs={"size": "large"}, custom={"nested": [1, 2.5, None]})[field]


@pytest.mark.parametrize("length", [MAX_MESSAGE - 1, MAX_MESSAGE, MAX_MESSAGE + 1, 25_000])
def test_error_message_is_truncated_at_ten_thousand_characters(length):
    payload = job()
    failure(payload, "E", "x" * length, now=NOW)
    assert MAX_MESSAGE == 10_000
    assert payload["error_message"] == "x" * min(length, 10_000)


def test_retry_until_the_limit_then_dead():
    payload = job(retry=3)
    actions = [failure(payload, "E", "m", now=NOW + n).action for n in range(4)]
    assert actions == ["retry", "retry", "retry", "dead"]
    assert payload["retry_count"] == 3


def test_default_limit_dies_on_the_twenty_sixth_failure():
    payload = job(retry=True, failed_at=NOW - 1000, retry_count=23)
    assert failure(payload, "E", "m", now=NOW).action == "retry"  # retry_count 24
    outcome = failure(payload, "E", "m", now=NOW)  # retry_count 25
    assert outcome.action == "dead"
    assert payload["retry_count"] == 25


def test_dead_outcome_is_scored_now_and_carries_the_fields():
    payload = job(retry=1, failed_at=NOW - 50, retry_count=0)
    outcome = failure(payload, "RuntimeError", "final", now=NOW)
    assert outcome == Outcome(True, "dead", outcome.payload, NOW)
    written = json.loads(outcome.payload)
    assert written["retry_count"] == 1
    assert written["error_message"] == "final"
    assert written["retried_at"] == NOW


def test_retry_zero_goes_straight_to_dead():
    payload = job(retry=0)
    outcome = failure(payload, "E", "m", now=NOW)
    assert outcome.action == "dead" and outcome.score == NOW
    assert payload["retry_count"] == 0 and payload["failed_at"] == NOW


@pytest.mark.parametrize("value", [False, None])
def test_retry_false_drops_the_job(value):
    outcome = failure(job(retry=value), "E", "m", now=NOW)
    assert outcome == Outcome(failed=True)
    assert outcome.action == "" and outcome.payload == ""


def test_missing_retry_field_means_retry():
    payload = job()
    del payload["retry"]
    assert failure(payload, "E", "m", now=NOW).action == "retry"


def test_dead_sends_the_job_as_it_is():
    payload = job(error_class="X")
    outcome = dead(payload, now=NOW)
    assert outcome == Outcome(True, "dead", json.dumps(payload, separators=(",", ":")), NOW)


def test_success_is_not_a_failure():
    assert Outcome(failed=False) == retry.SUCCESS
    assert retry.SUCCESS.action == ""


def test_an_outcome_carries_the_error_for_kiqs_members_but_compares_without_it():
    error = ValueError("boom")
    for payload in (job(retry=2), job(retry=0), job(retry=False), job(retry=0, dead=False)):
        outcome = failure(payload, "ValueError", "boom", now=NOW, error=error)
        assert outcome.error is error
    assert failure(job(retry=False), "E", "m", now=NOW, error=error) == Outcome(failed=True)


# Sidekiq's per-job options


def test_retry_queue_sends_the_retry_to_that_queue():
    payload = job(retry_queue="low")
    outcome = failure(payload, "E", "m", now=NOW)
    assert outcome.action == "retry" and json.loads(outcome.payload)["queue"] == "low"


def test_dead_false_drops_a_job_out_of_retries_instead_of_burying_it():
    payload = job(retry=1, dead=False)
    assert failure(payload, "E", "m", now=NOW).action == "retry"
    assert failure(payload, "E", "m", now=NOW) == Outcome(failed=True)


def _raise_from_inner() -> None:
    raise ValueError("deep")


def _caught() -> BaseException:
    try:
        _raise_from_inner()
    except ValueError as error:
        return error
    raise AssertionError("not raised")


@pytest.mark.parametrize(("option", "lines"),
                         [(True, 2), (1, 1), (5, 2), (False, None), (0, None), (None, None)])
def test_backtrace_option_stores_the_innermost_lines_as_sidekiq_compresses_them(option, lines):
    import base64
    import zlib

    payload = job(backtrace=option)
    failure(payload, "ValueError", "deep", now=NOW, error=_caught())
    if lines is None:
        assert "error_backtrace" not in payload
        return
    frames = json.loads(zlib.decompress(base64.b64decode(payload["error_backtrace"])))
    assert len(frames) == lines
    assert frames[0].endswith(":in _raise_from_inner") and "test_retry.py:" in frames[0]


def test_a_manual_retry_s_given_back_try_counts_from_zero_again():
    """Sidekiq's retry from the Web UI or the API decrements retry_count (to -1 for a job that
    failed once); the next failure is its retry number 0 again, a retry, not a first failure."""
    job = {"class": "A", "args": [], "jid": "j", "retry": 3, "retry_count": -1, "failed_at": 1.0}
    outcome = failure(job, "E", "again", now=100.0)
    assert outcome.action == "retry"
    assert job["retry_count"] == 0 and job["retried_at"] == 100.0 and job["failed_at"] == 1.0


def test_an_error_message_holding_a_lone_surrogate_is_scrubbed_as_sidekiq_scrubs():
    """A file name's bytes that are not UTF-8 (os.fsdecode) in a message: Ruby's JSON cannot
    write such a string back, so Sidekiq's poller or Web UI lost the retry entry holding it."""
    import os

    outcome = failure({"class": "J", "args": [], "jid": "a", "queue": "q"}, "FileNotFoundError",
                      "missing " + os.fsdecode(b"report-\xff.csv"))
    stored = json.loads(outcome.payload)
    assert stored["error_message"] == "missing report-\ufffd.csv"
    json.dumps(stored, ensure_ascii=False).encode("utf-8")  # valid Unicode, as Ruby reads it


def test_sidekiq_7s_retry_for_ends_the_retries_once_its_seconds_from_the_first_failure_are_past():
    job: dict[str, Any] = {"class": "J", "args": [], "jid": "a", "queue": "q", "retry_for": 60}
    first = failure(job, "E", "boom", now=1000.0)
    assert first.action == "retry" and job["failed_at"] == 1000.0
    assert failure(job, "E", "boom", now=1059.0).action == "retry"
    assert failure(job, "E", "boom", now=1061.0).action == "dead"
    assert failure({**job, "dead": False}, "E", "boom", now=1061.0).action == ""  # dropped
    in_ms = {**job, "failed_at": 1_700_000_000_000, "retry_count": 0}  # Sidekiq 8 writes milliseconds
    assert failure(dict(in_ms), "E", "boom", now=1_700_000_059.0).action == "retry"
    assert failure(in_ms, "E", "boom", now=1_700_000_061.0).action == "dead"

"""Active Job's callbacks and error policy: order, inheritance, retry_on/discard_on with kiq's retry set."""

from __future__ import annotations

import datetime as dt
import json

import pytest

import kiq
from kiq import adapters
from kiq.callbacks import (
    Abort,
    after_discard,
    after_enqueue,
    after_perform,
    around_enqueue,
    around_perform,
    before_enqueue,
    before_perform,
    discard_on,
    retry_on,
)
from kiq.client import build_payload
from kiq.processor import handle
from kiq.retry import SUCCESS

calls: list[str] = []


class BaseJob(kiq.Job):
    @before_perform
    def base_before(self) -> None:
        calls.append("base-before")

    @after_perform
    def base_after(self) -> None:
        calls.append("base-after")


class OrderedJob(BaseJob):
    @before_perform
    def first_before(self) -> None:
        calls.append(f"before-1 {self.arguments}")

    @before_perform
    def second_before(self) -> None:
        calls.append("before-2")

    @around_perform
    def outer(self, block) -> None:
        calls.append("outer-in")
        block()
        calls.append("outer-out")

    @around_perform
    def inner(self, block) -> None:
        calls.append("inner-in")
        block()
        calls.append("inner-out")

    @after_perform
    def first_after(self) -> None:
        calls.append("after-1")

    @after_perform
    def second_after(self) -> None:
        calls.append("after-2")

    @before_enqueue
    def check(self) -> None:
        calls.append(f"before-enqueue {self.arguments} {self.queue_name}")

    @around_enqueue
    def around_push(self, block) -> None:
        calls.append("around-enqueue-in")
        block()
        calls.append("around-enqueue-out")

    @after_enqueue
    def pushed(self) -> None:
        calls.append("after-enqueue")

    def perform(self, n: int) -> None:
        calls.append(f"perform {n}")


class OverridingJob(OrderedJob):
    def second_before(self) -> None:
        """No longer a callback."""


class SwallowingJob(kiq.Job):
    @around_perform
    def skip(self, block) -> None:
        calls.append("skipped")

    def perform(self) -> None:
        calls.append("never")


@pytest.fixture(autouse=True)
def clean():
    calls.clear()
    adapters.use("inline")
    yield
    adapters.use("redis")


def test_callback_order_follows_active_job():
    """The order Active Support itself gives the same callbacks set in the same order
    (set_callback :perform, ... run through run_callbacks on Ruby 3.1's ActiveSupport): an
    after callback defined after an around one runs inside it."""
    OrderedJob.perform_now(7)
    assert calls == [
        "base-before", "before-1 [7]", "before-2", "outer-in", "inner-in", "perform 7",
        "after-2", "after-1", "inner-out", "outer-out", "base-after",
    ]


def test_enqueue_callbacks_wrap_the_push():
    OrderedJob.set(queue="q").perform_later(3)
    assert calls[:4] == ["before-enqueue [3] q", "around-enqueue-in", "base-before", "before-1 [3]"]
    assert calls[-2:] == ["after-enqueue", "around-enqueue-out"]


class InterleavedJob(kiq.Job):
    """Callbacks of every kind, defined in an order that is not before, around, after."""

    @around_perform
    def outer(self, block) -> None:
        calls.append("outer-in")
        block()
        calls.append("outer-out")

    @before_perform
    def inside(self) -> None:
        calls.append("before, inside outer")

    @after_perform
    def done(self) -> None:
        calls.append("after, inside outer")

    def perform(self) -> None:
        calls.append("perform")


def test_a_before_callback_defined_after_an_around_one_runs_inside_it():
    InterleavedJob.perform_now()
    assert calls == ["outer-in", "before, inside outer", "perform", "after, inside outer", "outer-out"]


class JidSeeingJob(kiq.Job):
    """Active Job's job_id is known from the start: enqueue callbacks can log it."""

    @before_enqueue
    def seen_before(self) -> None:
        calls.append(f"before {self.jid}")

    @after_enqueue
    def seen_after(self) -> None:
        calls.append(f"after {self.jid}")

    def perform(self) -> None:
        pass


@pytest.mark.parametrize("adapter", ["redis", "inline", "test"])
def test_enqueue_callbacks_see_the_jid_the_job_is_enqueued_with(client, r, adapter):
    adapters.use(adapter)
    enqueued = JidSeeingJob.perform_later()
    assert len(enqueued.jid) == 24 and calls == [f"before {enqueued.jid}", f"after {enqueued.jid}"]
    if adapter == "redis":
        assert json.loads(r.lindex("queue:default", 0))["jid"] == enqueued.jid


class CallbackTenantJob(kiq.Job):
    """A before_enqueue that adds the current tenant to the arguments and picks the queue."""

    @before_enqueue
    def add_tenant(self) -> None:
        self.arguments.append("tenant-7")
        self.queue_name = "tenant-7"

    def perform(self, order: int, tenant: str) -> None:
        calls.append(f"order {order} of {tenant} from {self.queue_name}")


def test_what_a_before_enqueue_callback_changes_is_what_is_enqueued(client, r):
    adapters.use("redis")
    CallbackTenantJob.perform_later(12)
    job = json.loads(r.lindex("queue:tenant-7", 0))
    assert (job["args"], job["queue"]) == ([12, "tenant-7"], "tenant-7")
    adapters.use("inline")
    CallbackTenantJob.perform_later(13)
    assert calls == ["order 13 of tenant-7 from tenant-7"]


def test_perform_now_gives_the_job_an_id_as_active_job_does():
    seen: list[str] = []

    class IdJob(kiq.Job):
        def perform(self) -> None:
            seen.append(self.jid)
            seen.append(self.job_id)

    IdJob.perform_now()
    IdJob.perform_now()
    assert len(seen[0]) == 24 and seen[0] == seen[1] and seen[2] not in ("", seen[0])


def test_overriding_a_callback_with_a_plain_method_removes_it():
    OverridingJob.perform_now(1)
    assert "before-2" not in calls and "before-1 [1]" in calls


def test_an_around_callback_that_does_not_call_its_block_halts_the_job_as_in_rails():
    assert SwallowingJob.perform_now() is None
    assert calls == ["skipped"]


class GuardedJob(kiq.Job):
    """Halts as Rails' throw :abort does: its enqueue when told to, its run when told to."""

    @before_enqueue
    def only_when_open(self) -> None:
        if self.arguments[0] == "closed":
            raise Abort("the shop is closed")

    @before_perform
    def not_twice(self) -> None:
        if self.arguments[0] == "done already":
            raise Abort

    def perform(self, state: str) -> None:
        calls.append(f"performed {state}")


def test_abort_in_a_before_enqueue_callback_enqueues_nothing(client, r):
    adapters.use("redis")
    halted = GuardedJob.perform_later("closed")
    assert not halted.successfully_enqueued and len(halted.jid) == 24
    assert r.llen("queue:default") == 0
    assert GuardedJob.perform_later("open").successfully_enqueued and r.llen("queue:default") == 1


def test_abort_in_a_before_perform_callback_ends_the_job_as_done_not_failed():
    outcome = handle(GuardedJob, build_payload("GuardedJob", ["done already"], retry=True), "default")
    assert outcome == SUCCESS and calls == []  # not retried 25 times, and perform never ran
    assert handle(GuardedJob, build_payload("GuardedJob", ["new"], retry=True), "default") == SUCCESS
    assert calls == ["performed new"]


class Timeout(Exception):
    pass


class Gone(Exception):
    pass


@discard_on(Gone)
@retry_on(Timeout, wait=dt.timedelta(seconds=30), attempts=3, jitter=0)
class PolicyJob(kiq.Job):
    retry = 2

    def perform(self, error: str) -> None:
        raise {"timeout": Timeout, "gone": Gone, "other": ValueError}[error]("x")


def attempt(payload: dict) -> tuple[str, dict]:
    outcome = handle(PolicyJob, payload, "default")
    return outcome.action or ("discard" if outcome.failed else "done"), json.loads(outcome.payload or "{}")


def test_retry_on_uses_its_own_wait_then_falls_through_to_the_retry_policy():
    payload = build_payload("PolicyJob", ["timeout"], retry=2)
    action, payload = attempt(payload)
    assert action == "retry"
    assert payload["exception_executions"] == {"[Timeout]": 1} and payload["retry_count"] == 0
    action, payload = attempt(payload)
    assert action == "retry" and payload["exception_executions"] == {"[Timeout]": 2}
    action, payload = attempt(payload)  # third attempt: retry_on is spent, retry = 2 decides
    assert action == "dead"
    assert payload["retry_count"] == 2 and payload["error_class"].endswith("Timeout")


def test_retry_on_wait_is_the_score():
    payload = build_payload("PolicyJob", ["timeout"])
    outcome = handle(PolicyJob, payload, "default")
    assert outcome.score - json.loads(outcome.payload)["failed_at"] == pytest.approx(30, abs=0.5)


def test_discard_on_drops_the_job_and_other_errors_use_sidekiq_backoff():
    assert attempt(build_payload("PolicyJob", ["gone"]))[0] == "discard"
    outcome = handle(PolicyJob, build_payload("PolicyJob", ["other"]), "default")
    assert outcome.action == "retry"
    assert 15 <= outcome.score - json.loads(outcome.payload)["failed_at"] <= 25


@retry_on(Timeout, attempts=3)
@discard_on(Exception)  # written last: searched first, as Rails' last line
class DiscardLastJob(kiq.Job):
    def perform(self, error: str) -> None:
        raise {"timeout": Timeout, "other": ValueError}[error]("x")


@discard_on(Exception)
@retry_on(Timeout, attempts=3)  # written last: a Timeout is retried, anything else discarded
class RetryLastJob(DiscardLastJob):
    pass


@retry_on(Exception, attempts=10)
@retry_on(Timeout, attempts=2)
class TwoRetriesJob(DiscardLastJob):
    pass


@discard_on(Exception)
class DiscardingParentJob(kiq.Job):
    def perform(self, error: str) -> None:
        raise {"timeout": Timeout, "other": ValueError}[error]("x")


@retry_on(Timeout, attempts="unlimited", jitter=0)
class RetryingChildJob(DiscardingParentJob):
    pass


def outcome_of(job: type[kiq.Job], error: str, runs: int = 1) -> list[str]:
    """What became of each of ``runs`` failing runs of ``job``, the payload carried along."""
    payload = build_payload(job.job_name, [error], retry=job.retry)
    seen = []
    for _ in range(runs):
        outcome = handle(job, payload, "default")
        seen.append(outcome.action or ("discard" if outcome.failed else "done"))
        payload = json.loads(outcome.payload) if outcome.payload else payload
    return seen


def test_the_rule_written_last_decides_as_in_active_job():
    """Rails searches rescue handlers from the last declared: decorators read top to bottom as
    Rails' lines, so the lowest one is tried first, discard_on and retry_on alike."""
    assert outcome_of(DiscardLastJob, "timeout") == ["discard"]
    assert outcome_of(RetryLastJob, "timeout", 3) == ["retry", "retry", "retry"]  # then retry = True
    assert outcome_of(RetryLastJob, "other") == ["discard"]
    payload = build_payload("TwoRetriesJob", ["timeout"], retry=True)
    for _ in range(2):
        payload = json.loads(handle(TwoRetriesJob, payload, "default").payload or "{}")
    assert payload["exception_executions"] == {"[Timeout]": 2} and payload["retry_count"] == 1


def test_a_subclass_rule_comes_before_its_parents_and_unlimited_never_runs_out():
    assert outcome_of(RetryingChildJob, "other") == ["discard"]
    payload = build_payload("RetryingChildJob", ["timeout"], retry=True)
    for _ in range(30):
        outcome = handle(RetryingChildJob, payload, "default")
        assert outcome.action == "retry"
        payload = json.loads(outcome.payload or "{}")
    assert payload["exception_executions"] == {"[Timeout]": 30} and payload["retry_count"] == 29


def test_rules_refuse_what_no_failure_could_match_where_they_are_written():
    with pytest.raises(TypeError, match="takes exception classes, not 'ValueError'"):
        discard_on("ValueError")
    with pytest.raises(TypeError, match="retry_on takes exception classes"):
        retry_on(Timeout, ValueError())
    with pytest.raises(ValueError, match="needs at least one exception class"):
        retry_on()
    for attempts in ("forever", 0, 2.5, True):
        with pytest.raises(ValueError, match="attempts is a whole number from 1, or 'unlimited'"):
            retry_on(Timeout, attempts=attempts)


@discard_on(Gone)
@retry_on(Timeout, attempts=2, wait=0, jitter=0)
class DiscardNotedJob(kiq.Job):
    retry = 1

    @after_discard
    def note(self, error: BaseException) -> None:
        calls.append(f"discarded {self.arguments[0]} after {type(error).__name__}")

    @after_discard
    def broken(self, error: BaseException) -> None:
        raise RuntimeError("a callback that fails")

    def perform(self, error: str) -> None:
        raise {"timeout": Timeout, "gone": Gone, "other": ValueError}[error](error)


def test_after_discard_runs_when_the_job_will_not_run_again():
    """Active Job's after_discard (and Sidekiq's retries_exhausted): on discard_on, and once the
    retries are spent and the job goes to the dead set; not while it will be retried. A callback
    that raises is logged, and the others still run."""
    assert outcome_of(DiscardNotedJob, "gone") == ["discard"]
    assert calls == ["discarded gone after Gone"]
    calls.clear()
    assert outcome_of(DiscardNotedJob, "other", 2) == ["retry", "dead"]  # retry = 1
    assert calls == ["discarded other after ValueError"]
    calls.clear()
    assert outcome_of(DiscardNotedJob, "timeout", 2) == ["retry", "dead"]  # retry_on spent, then retry = 1
    assert calls == ["discarded timeout after Timeout"]


def test_after_discard_runs_in_the_test_adapter_too():
    from kiq.testing import test_adapter

    with test_adapter() as jobs:
        DiscardNotedJob.perform_later("gone")
        jobs.perform_enqueued_jobs()
    assert calls == ["discarded gone after Gone"]


def test_wait_forms():
    from kiq.callbacks import RetryRule

    assert RetryRule((Timeout,), 5, 3, 0).delay(1) == 5
    assert RetryRule((Timeout,), dt.timedelta(minutes=1), 3, 0).delay(1) == 60
    assert RetryRule((Timeout,), lambda n: n * 10, 3, 0).delay(2) == 20
    assert RetryRule((Timeout,), "polynomially_longer", 3, 0).delay(2) == 2**4 + 2
    with pytest.raises(ValueError, match="unknown wait"):
        retry_on(Timeout, wait="exponentially")

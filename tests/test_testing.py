"""kiq.testing: the test adapter's context manager, the kiq_jobs fixture (from the plugin), the
assertions (passing and failing with a readable message) and performing enqueued jobs."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest

import kiq
from kiq import adapters, testing
from kiq.callbacks import discard_on, retry_on
from kiq.testing import Jobs

performed: list[tuple[str, object]] = []


class HelperResizeJob(kiq.Job):
    queue = "images"

    def perform(self, image_id: int, size: str = "medium") -> None:
        performed.append(("resize", (image_id, size)))


class HelperPriceJob(kiq.Job):
    def perform(self, amount: Decimal, on: dt.date) -> None:
        performed.append(("price", (amount, on)))


class HelperChainJob(kiq.Job):
    """Enqueues the next link until ``left`` reaches 0, and a resize at the end."""

    def perform(self, left: int) -> None:
        performed.append(("chain", left))
        if left:
            HelperChainJob.perform_later(left - 1)
        else:
            HelperResizeJob.perform_later(0)


class HelperForeverJob(kiq.Job):
    def perform(self) -> None:
        HelperForeverJob.perform_later()


class HelperFailingJob(kiq.Job):
    def perform(self) -> None:
        raise ValueError("broken")


class Flaky(Exception):
    pass


@retry_on(Flaky, wait=30, attempts=3)
@discard_on(KeyError)
class HelperPolicyJob(kiq.Job):
    def perform(self, error: str) -> None:
        performed.append(("policy", self.executions))
        raise {"flaky": Flaky, "gone": KeyError}[error](error)


@retry_on(Flaky, wait=lambda executions: -1.0)
class HelperNegativeWaitJob(kiq.Job):
    retry = 0

    def perform(self) -> None:
        performed.append(("negative", self.executions))
        raise Flaky("flaky")


class HelperRailsJob(kiq.Job):
    active_job = True

    def perform(self, user_id: int, notify: bool = False) -> None:
        performed.append(("rails", (user_id, notify)))


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    performed.clear()
    yield
    adapters._current = None


# Switching adapters


def test_the_fixture_comes_from_the_plugin(kiq_jobs: Jobs, request: pytest.FixtureRequest) -> None:
    assert "kiq_jobs" not in globals()  # not imported here: the kiq pytest plugin provides it
    assert request.config.pluginmanager.get_plugin("kiq") is testing
    assert isinstance(adapters.current(), adapters.TestAdapter)
    assert kiq_jobs.adapter is adapters.current()


def test_context_manager_installs_a_fresh_adapter_and_restores_the_previous_one() -> None:
    outer_adapter = adapters.use("inline")
    with testing.test_adapter() as outer:
        HelperResizeJob.perform_later(1)
        with testing.test_adapter() as inner:
            assert adapters.current() is inner.adapter
            HelperResizeJob.perform_later(2)
        assert adapters.current() is outer.adapter
        assert [job.args for job in outer.enqueued_jobs] == [[1]]
        assert [job.args for job in inner.enqueued_jobs] == [[2]]
    assert adapters.current() is outer_adapter
    assert performed == []


def test_context_manager_restores_an_unset_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIQ_ADAPTER", "inline")
    adapters._current = None
    with testing.test_adapter():
        pass
    assert adapters._current is None
    assert isinstance(adapters.current(), adapters.InlineAdapter)


def test_kiq_testing_imports_without_pytest() -> None:
    code = ("import sys; sys.modules['pytest'] = None; import kiq.testing as t; "
            "assert not hasattr(t, 'kiq_jobs')\n"
            "with t.test_adapter() as jobs: jobs.assert_no_enqueued_jobs()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# Records


def test_records_are_readable(kiq_jobs: Jobs) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    enqueued = HelperResizeJob.set(wait_until=when).perform_later(7, size="large")
    HelperPriceJob.perform_later(Decimal("9.99"), dt.date(2026, 1, 2))
    resize, price = kiq_jobs.enqueued_jobs
    assert resize.job is HelperResizeJob and resize.job_name == "HelperResizeJob"
    assert (resize.args, resize.kwargs, resize.queue, resize.at) == ([7], {"size": "large"}, "images", when)
    assert resize.jid == enqueued.jid
    assert price.args == [Decimal("9.99"), dt.date(2026, 1, 2)] and price.at is None
    assert repr(resize) == (f"HelperResizeJob(7, size='large') queue='images' "
                            f"at=2030-01-02T03:04:05.000+00:00 jid={enqueued.jid}")
    assert kiq_jobs.performed_jobs == []


def test_unserializable_arguments_fail_at_enqueue(kiq_jobs: Jobs) -> None:
    with pytest.raises(kiq.SerializationError):
        HelperResizeJob.perform_later(object())
    kiq_jobs.assert_no_enqueued_jobs()


def test_active_job_payloads_are_recorded_and_performed(kiq_jobs: Jobs) -> None:
    HelperRailsJob.perform_later(5, notify=True)
    [record] = kiq_jobs.enqueued_jobs
    assert record.payload["class"] != "HelperRailsJob"  # Rails' wrapper
    assert (record.job, record.args, record.kwargs) == (HelperRailsJob, [5], {"notify": True})
    kiq_jobs.assert_enqueued_with(job=HelperRailsJob, args=[5], kwargs={"notify": True})
    kiq_jobs.perform_enqueued_jobs()
    assert performed == [("rails", (5, True))]


# Assertions


def test_assert_enqueued_with_matches_only_the_given_criteria(kiq_jobs: Jobs) -> None:
    HelperPriceJob.perform_later(Decimal("1"), dt.date(2026, 1, 1))
    HelperResizeJob.set(queue="urgent").perform_later(3, size="small")
    record = kiq_jobs.assert_enqueued_with(job=HelperResizeJob)
    assert record.args == [3]
    kiq_jobs.assert_enqueued_with(job="HelperResizeJob", args=(3,), kwargs={"size": "small"}, queue="urgent")
    kiq_jobs.assert_enqueued_with(args=[Decimal("1"), dt.date(2026, 1, 1)])
    kiq_jobs.assert_enqueued_with(queue="default", at=None)
    kiq_jobs.assert_enqueued_with()


@pytest.mark.parametrize(
    ("criteria", "wanted"),
    [
        ({"job": HelperPriceJob}, "job=HelperPriceJob"),
        ({"job": HelperResizeJob, "args": [4]}, "job=HelperResizeJob, args=[4]"),
        ({"kwargs": {}}, "kwargs={}"),
        ({"kwargs": {"size": "large"}}, "kwargs={'size': 'large'}"),
        ({"queue": "default"}, "queue='default'"),
        ({"at": None}, "at=None (to run now)"),
    ],
)
def test_assert_enqueued_with_fails_listing_what_was_enqueued(
    kiq_jobs: Jobs, criteria: dict[str, object], wanted: str
) -> None:
    job = HelperResizeJob.set(wait=60).perform_later(3, size="small")
    with pytest.raises(AssertionError) as failure:
        kiq_jobs.assert_enqueued_with(**criteria)  # type: ignore[arg-type]
    message = str(failure.value)
    assert message.startswith(f"no enqueued job matches {wanted}\nenqueued jobs (1):\n")
    assert "  HelperResizeJob(3, size='small') queue='images' at=" in message
    assert job.jid in message


def test_assert_enqueued_with_says_when_nothing_is_enqueued(kiq_jobs: Jobs) -> None:
    with pytest.raises(AssertionError, match=r"^no enqueued job matches anything\nno jobs are enqueued$"):
        kiq_jobs.assert_enqueued_with()


def test_assert_enqueued_with_compares_at_within_a_tolerance(kiq_jobs: Jobs) -> None:
    when = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    HelperResizeJob.set(wait_until=when).perform_later(1)
    HelperResizeJob.set(wait=dt.timedelta(hours=1)).perform_later(2)
    assert kiq_jobs.assert_enqueued_with(at=when).args == [1]
    assert kiq_jobs.assert_enqueued_with(at=when.timestamp() + 0.5).args == [1]
    assert kiq_jobs.assert_enqueued_with(at=dt.timedelta(hours=1)).args == [2]
    assert kiq_jobs.assert_enqueued_with(at=dt.timedelta(minutes=59), tolerance=61).args == [2]
    with pytest.raises(AssertionError, match=r"at=2030-06-01T12:00:02.000\+00:00\n"):
        kiq_jobs.assert_enqueued_with(at=when + dt.timedelta(seconds=2))
    with pytest.raises(AssertionError, match=r"at=now \+ 0:30:00"):
        kiq_jobs.assert_enqueued_with(at=dt.timedelta(minutes=30))
    with pytest.raises(AssertionError):
        kiq_jobs.assert_enqueued_with(at=None)


def test_assert_enqueued_jobs_counts_all_or_one_class(kiq_jobs: Jobs) -> None:
    kiq_jobs.assert_no_enqueued_jobs()
    HelperResizeJob.perform_later(1)
    HelperResizeJob.perform_later(2)
    HelperPriceJob.perform_later(Decimal("1"), dt.date(2026, 1, 1))
    kiq_jobs.assert_enqueued_jobs(3)
    kiq_jobs.assert_enqueued_jobs(2, job=HelperResizeJob)
    kiq_jobs.assert_no_enqueued_jobs(job=HelperChainJob)
    with pytest.raises(AssertionError) as failure:
        kiq_jobs.assert_enqueued_jobs(1, job=HelperResizeJob)
    assert str(failure.value).startswith(
        "expected 1 HelperResizeJob enqueued job(s), found 2\nenqueued jobs (3):\n"
        "  HelperResizeJob(1) queue='images' jid="
    )
    with pytest.raises(AssertionError, match=r"^expected 0 enqueued job\(s\), found 3\n"):
        kiq_jobs.assert_no_enqueued_jobs()
    with pytest.raises(AssertionError, match=r"^expected 0 HelperPriceJob enqueued job\(s\), found 1\n"):
        kiq_jobs.assert_no_enqueued_jobs(job=HelperPriceJob)


def test_assert_performed_jobs(kiq_jobs: Jobs) -> None:
    with pytest.raises(AssertionError, match=r"^expected 1 performed job\(s\), found 0\n"
                                             r"performed jobs \(0\): none$"):
        kiq_jobs.assert_performed_jobs(1)
    HelperResizeJob.perform_later(1)
    kiq_jobs.perform_enqueued_jobs()
    kiq_jobs.assert_performed_jobs(1)
    kiq_jobs.assert_performed_jobs(0, job=HelperPriceJob)
    with pytest.raises(AssertionError, match=r"found 1\nperformed jobs \(1\):\n  HelperResizeJob\(1\)"):
        kiq_jobs.assert_performed_jobs(2, job=HelperResizeJob)


# Performing


def test_assert_performed_with_and_no_performed_jobs(kiq_jobs: Jobs) -> None:
    kiq_jobs.assert_no_performed_jobs()
    HelperResizeJob.perform_later(7, size="large")
    HelperChainJob.perform_later(0)
    kiq_jobs.perform_enqueued_jobs(only=HelperResizeJob)
    record = kiq_jobs.assert_performed_with(job=HelperResizeJob, args=[7], kwargs={"size": "large"},
                                            queue="images")
    assert record.args == [7]
    kiq_jobs.assert_no_performed_jobs(job=HelperChainJob)
    with pytest.raises(AssertionError, match=r"no performed job matches job=HelperChainJob\n"
                                             r"performed jobs \(1\):\n  HelperResizeJob\(7, size='large'\)"):
        kiq_jobs.assert_performed_with(job=HelperChainJob)
    with pytest.raises(AssertionError, match="expected 0 performed job"):
        kiq_jobs.assert_no_performed_jobs()


def test_perform_enqueued_jobs_performs_jobs_enqueued_by_jobs(kiq_jobs: Jobs) -> None:
    HelperChainJob.perform_later(2)
    HelperPriceJob.perform_later(Decimal("2.50"), dt.date(2026, 3, 1))
    done = kiq_jobs.perform_enqueued_jobs()
    assert performed == [
        ("chain", 2),
        ("price", (Decimal("2.50"), dt.date(2026, 3, 1))),
        ("chain", 1),
        ("chain", 0),
        ("resize", (0, "medium")),
    ]
    assert [record.job_name for record in done.jobs] == [
        "HelperChainJob", "HelperPriceJob", "HelperChainJob", "HelperChainJob", "HelperResizeJob",
    ]
    kiq_jobs.assert_no_enqueued_jobs()
    kiq_jobs.assert_performed_jobs(5)
    assert [record.args for record in kiq_jobs.performed_jobs][:3] == [
        [2], [Decimal("2.50"), dt.date(2026, 3, 1)], [1],
    ]


def test_perform_enqueued_jobs_only_some_classes(kiq_jobs: Jobs) -> None:
    HelperResizeJob.set(wait=3600).perform_later(1)
    HelperChainJob.perform_later(0)
    kiq_jobs.perform_enqueued_jobs(only=HelperResizeJob)
    assert performed == [("resize", (1, "medium"))]
    kiq_jobs.assert_enqueued_jobs(1, job=HelperChainJob)
    kiq_jobs.perform_enqueued_jobs(only=[HelperChainJob, "HelperPriceJob"])
    assert performed[1:] == [("chain", 0)]
    kiq_jobs.assert_enqueued_with(job=HelperResizeJob, args=[0])  # enqueued by the chain, not performed


class HelperHourlyJob(kiq.Job):
    """Schedules its own next run, as a job that polls does."""

    def perform(self, run: int) -> None:
        performed.append(("hourly", run))
        HelperHourlyJob.set(wait=3600).perform_later(run + 1)


def test_perform_enqueued_jobs_at_and_queue_filter_as_active_job_does(kiq_jobs: Jobs) -> None:
    HelperHourlyJob.perform_later(1)
    kiq_jobs.perform_enqueued_jobs(at=dt.timedelta(0))  # its next run is not due: it stays enqueued
    assert performed == [("hourly", 1)]
    kiq_jobs.assert_enqueued_with(job=HelperHourlyJob, args=[2], at=dt.timedelta(hours=1))
    kiq_jobs.perform_enqueued_jobs(at=dt.datetime.now(dt.timezone.utc))
    assert performed == [("hourly", 1)]
    kiq_jobs.clear()
    HelperResizeJob.perform_later(1)  # queue "images"
    HelperChainJob.perform_later(0)  # queue "default", enqueues a resize
    kiq_jobs.perform_enqueued_jobs(queue="images")
    assert performed[-1] == ("resize", (1, "medium"))
    kiq_jobs.assert_enqueued_jobs(1, job=HelperChainJob)
    kiq_jobs.perform_enqueued_jobs(queue="default")
    assert performed[-1] == ("chain", 0)
    kiq_jobs.assert_enqueued_with(job=HelperResizeJob, args=[0])  # of queue "images": left enqueued


def test_perform_enqueued_jobs_stops_jobs_that_enqueue_forever(kiq_jobs: Jobs) -> None:
    HelperForeverJob.perform_later()
    with pytest.raises(RuntimeError, match=r"^performed 20 jobs and jobs are still enqueued \(next: "
                                           r"HelperForeverJob\(\) queue='default'"):
        kiq_jobs.perform_enqueued_jobs(limit=20)
    kiq_jobs.assert_performed_jobs(20)
    kiq_jobs.assert_enqueued_jobs(1)


def test_a_failing_job_raises_and_is_no_longer_enqueued(kiq_jobs: Jobs) -> None:
    HelperFailingJob.perform_later()
    HelperResizeJob.perform_later(1)
    with pytest.raises(ValueError, match="broken"):
        kiq_jobs.perform_enqueued_jobs()
    kiq_jobs.assert_enqueued_jobs(1, job=HelperResizeJob)
    kiq_jobs.assert_no_enqueued_jobs(job=HelperFailingJob)
    kiq_jobs.assert_performed_jobs(0)


def test_discard_on_drops_and_retry_on_enqueues_again_until_its_attempts_are_used(kiq_jobs: Jobs) -> None:
    HelperPolicyJob.perform_later("gone")
    kiq_jobs.perform_enqueued_jobs()
    assert performed == [("policy", 1)]
    kiq_jobs.assert_performed_jobs(1)
    kiq_jobs.assert_no_enqueued_jobs()

    performed.clear()
    HelperPolicyJob.perform_later("flaky")
    with pytest.raises(Flaky):
        kiq_jobs.perform_enqueued_jobs()
    assert performed == [("policy", 1), ("policy", 2), ("policy", 3)]
    kiq_jobs.assert_performed_jobs(3, job=HelperPolicyJob)  # the discarded run and two retried runs

    kiq_jobs.clear()
    HelperPolicyJob.perform_later("flaky")
    kiq_jobs.adapter.perform(kiq_jobs.adapter.enqueued.pop())  # one run: the retry waits 30 s (+ jitter)
    retried = kiq_jobs.assert_enqueued_with(job=HelperPolicyJob, args=["flaky"],
                                            at=dt.timedelta(seconds=32), tolerance=3)
    assert retried.payload["retry_count"] == 0 and retried.payload["error_class"] == "test_testing.Flaky"


def test_a_retry_on_wait_kiq_refuses_leaves_the_retry_policy_to_decide(kiq_jobs: Jobs) -> None:
    """A wait of -1 s falls back to the job's retry policy: ``retry = 0`` sends the job to the
    dead set at its first failure in a worker, so the test adapter raises at once; it ran the
    job three times instead."""
    HelperNegativeWaitJob.perform_later()
    with pytest.raises(Flaky):
        kiq_jobs.perform_enqueued_jobs()
    assert performed == [("negative", 1)]
    kiq_jobs.assert_no_enqueued_jobs()


def test_retry_on_refuses_a_wait_no_worker_could_keep() -> None:
    for wait in (-1, float("nan"), float("inf"), dt.timedelta(seconds=-5), True):
        with pytest.raises(ValueError, match="retry_on's wait is a number of seconds"):
            retry_on(Flaky, wait=wait)  # type: ignore[arg-type]


def test_block_form_performs_jobs_as_they_are_enqueued(kiq_jobs: Jobs) -> None:
    with kiq_jobs.perform_enqueued_jobs() as block:
        HelperChainJob.perform_later(1)
        assert performed == [("chain", 1), ("chain", 0), ("resize", (0, "medium"))]
        HelperResizeJob.perform_later(9)
        assert performed[-1] == ("resize", (9, "medium"))
    kiq_jobs.assert_no_enqueued_jobs()
    assert len(block.jobs) == 4
    HelperResizeJob.perform_later(10)  # after the block: recorded again, not performed
    assert len(performed) == 4
    kiq_jobs.assert_enqueued_with(job=HelperResizeJob, args=[10])


def test_block_form_with_only_records_the_others(kiq_jobs: Jobs) -> None:
    with kiq_jobs.perform_enqueued_jobs(only=HelperChainJob):
        HelperChainJob.perform_later(1)
        HelperPriceJob.perform_later(Decimal("1"), dt.date(2026, 1, 1))
    assert performed == [("chain", 1), ("chain", 0)]
    kiq_jobs.assert_enqueued_jobs(2)
    kiq_jobs.assert_enqueued_with(job=HelperResizeJob, args=[0])
    kiq_jobs.assert_enqueued_with(job=HelperPriceJob)


def test_block_form_stops_jobs_that_enqueue_forever(kiq_jobs: Jobs) -> None:
    with pytest.raises(RuntimeError, match=r"^performed 30 jobs"), kiq_jobs.perform_enqueued_jobs(limit=30):
        HelperForeverJob.perform_later()
    kiq_jobs.assert_performed_jobs(30)
    kiq_jobs.assert_enqueued_jobs(1)
    HelperForeverJob.perform_later()  # the block is over: recorded, not performed
    kiq_jobs.assert_enqueued_jobs(2)


def test_clear_forgets_everything(kiq_jobs: Jobs) -> None:
    HelperResizeJob.perform_later(1)
    kiq_jobs.perform_enqueued_jobs()
    HelperResizeJob.perform_later(2)
    kiq_jobs.clear()
    assert kiq_jobs.enqueued_jobs == [] and kiq_jobs.performed_jobs == []

"""Testing code that enqueues jobs: the test adapter, assertions on what was enqueued, and performing it.

In pytest, ask for the ``kiq_jobs`` fixture (this module is registered as the
``kiq`` pytest plugin, so nothing needs importing)::

    def test_signup_sends_a_welcome_mail(kiq_jobs):
        signup("ada@example.com")
        kiq_jobs.assert_enqueued_with(job=WelcomeMailJob, args=["ada@example.com"])
        kiq_jobs.perform_enqueued_jobs()

Elsewhere (unittest, a script), ``with kiq.testing.test_adapter() as jobs:``
gives the same helper. Either way every ``perform_later`` inside goes to a
fresh test adapter, which records the job and runs nothing until asked; the
adapter that was in use before comes back at the end.

Jobs are recorded as the payloads a worker would read (serialized and parsed
again), so an argument that cannot be serialized fails the test at enqueue
time, as it would fail in production.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from types import TracebackType
from typing import Any

from kiq import activejob, adapters, callbacks, retry
from kiq.adapters import TestAdapter
from kiq.job import Job, lookup
from kiq.payload import job_data, job_name
from kiq.serialize import deserialize_args, deserialize_kwargs, serialize_args, serialize_kwargs

__all__ = ["DEFAULT_LIMIT", "JobRecord", "Jobs", "Performing", "RecordingAdapter", "test_adapter"]

DEFAULT_LIMIT = 1000
"""Jobs one ``perform_enqueued_jobs`` performs before it decides jobs keep enqueuing each other forever."""

AT_TOLERANCE = 1.0
"""Seconds by which a job's ``at`` may differ from the one an assertion expects."""

JobSelector = type[Job] | str
"""A job class, or a wire name (the payload's ``class``, e.g. ``"Billing::InvoiceJob"``)."""

Payload = dict[str, Any]


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset.UNSET


class JobRecord:
    """One recorded job, readable: ``job``, ``args``, ``kwargs``, ``queue``, ``at``, ``jid``.

    ``args`` and ``kwargs`` are deserialized when first read (global IDs are
    located then); ``payload`` is the job hash itself.
    """

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self.job_name: str = job_name(payload)
        self.job: type[Job] | None = lookup(self.job_name)
        self.queue: str = str(payload["queue"])
        self.jid: str = str(payload["jid"])
        at = payload.get("at")
        self.at: dt.datetime | None = (
            None if at is None else dt.datetime.fromtimestamp(float(at), dt.timezone.utc)
        )

    @cached_property
    def _arguments(self) -> tuple[list[Any], dict[str, Any]]:
        data = job_data(self.payload)
        if data is not None:
            return activejob.arguments(data)
        return deserialize_args(self.payload["args"]), deserialize_kwargs(self.payload.get("kwargs") or {})

    @property
    def args(self) -> list[Any]:
        return self._arguments[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._arguments[1]

    def __repr__(self) -> str:
        try:
            shown = [repr(arg) for arg in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
            call = f"{self.job_name}({', '.join(shown)})"
        except Exception as error:
            call = f"{self.job_name}(<unreadable arguments: {error}>)"
        at = "" if self.at is None else f" at={self.at.isoformat(timespec='milliseconds')}"
        return f"{call} queue={self.queue!r}{at} jid={self.jid}"


class RecordingAdapter(TestAdapter):
    """The test adapter kiq.testing installs.

    As the plain TestAdapter, it records each job in ``enqueued``. While
    ``perform_on_enqueue`` is set (``with jobs.perform_enqueued_jobs():``), a
    job that ``perform_only`` accepts is performed instead of recorded there; a
    job enqueued by a job being performed waits until that one has finished,
    so chains of jobs run one after another rather than nested.
    """

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.perform_only: Callable[[Payload], bool] = _everything
        self.limit = DEFAULT_LIMIT
        self.performed_in_block = 0
        self._backlog: deque[Payload] = deque()
        self._busy = False

    def accept(self, payload: Payload) -> None:
        if not (self.perform_on_enqueue and self.perform_only(payload)):
            self.enqueued.append(payload)
            return
        self._backlog.append(payload)
        if self._busy:
            return  # the loop below, further up this stack, performs it next
        self._busy = True
        try:
            while self._backlog:
                if self.performed_in_block >= self.limit:
                    raise RuntimeError(_too_many(self.limit, self._backlog[0]))
                self.performed_in_block += 1
                self.perform(self._backlog.popleft())
        finally:
            self._busy = False
            self.enqueued.extend(self._backlog)  # what an error left unperformed is still enqueued
            self._backlog.clear()

    def perform(self, payload: Payload) -> None:
        """Run the job as a worker would, except that a failure kiq would retry or kill is raised.

        ``discard_on`` drops the job; ``retry_on`` enqueues it again, due after its
        wait, until its attempts are used up. Either way the job counts as performed.
        """
        from kiq.processor import build, discarded, error_name, perform

        record = JobRecord(payload)
        if record.job is None:
            raise LookupError(f"no job class registered as {record.job_name!r}")
        job = build(record.job, payload)
        try:
            perform(job)
        except Exception as error:
            decision, delay = callbacks.decide(record.job, error, payload)
            if decision == "default":
                raise
            if decision == "retry":
                outcome = retry.failure(json.loads(json.dumps(payload)), error_name(error), str(error),
                                        delay=delay)
                if outcome.action != "retry":  # a wait kiq refuses: the job's own retry policy decided
                    raise
                self.performed.append(payload)
                again = json.loads(outcome.payload)
                again["at"] = outcome.score
                self.accept(again)
                return
            self.performed.append(payload)
            discarded(job, error)
            return
        self.performed.append(payload)


class Performing:
    """What ``perform_enqueued_jobs`` returns: the jobs it performed (``jobs``), and a context manager.

    As a context manager, jobs enqueued inside the block are performed as they
    are enqueued (those ``only`` accepts), and added to ``jobs`` at the end.
    """

    def __init__(self, adapter: RecordingAdapter, only: Callable[[Payload], bool], limit: int,
                 jobs: list[JobRecord]) -> None:
        self.adapter = adapter
        self.only = only
        self.limit = limit
        self.jobs = jobs
        self._saved: list[tuple[bool, Callable[[Payload], bool], int, int]] = []
        self._start: list[int] = []

    def __enter__(self) -> Performing:
        adapter = self.adapter
        self._saved.append((adapter.perform_on_enqueue, adapter.perform_only, adapter.limit,
                            adapter.performed_in_block))
        self._start.append(len(adapter.performed))
        adapter.perform_on_enqueue, adapter.perform_only = True, self.only
        adapter.limit, adapter.performed_in_block = self.limit, 0
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        adapter = self.adapter
        (adapter.perform_on_enqueue, adapter.perform_only, adapter.limit,
         adapter.performed_in_block) = self._saved.pop()
        self.jobs.extend(JobRecord(payload) for payload in adapter.performed[self._start.pop():])


class Jobs:
    """Assertions on the jobs enqueued through the test adapter, and performing them.

    ``enqueued_jobs`` are the jobs waiting (enqueued and not yet performed),
    ``performed_jobs`` those performed, both oldest first, as ``JobRecord``.
    """

    __test__ = False

    def __init__(self, adapter: RecordingAdapter) -> None:
        self.adapter = adapter

    @property
    def enqueued_jobs(self) -> list[JobRecord]:
        return [JobRecord(payload) for payload in self.adapter.enqueued]

    @property
    def performed_jobs(self) -> list[JobRecord]:
        return [JobRecord(payload) for payload in self.adapter.performed]

    def clear(self) -> None:
        """Forget every enqueued and performed job."""
        self.adapter.enqueued.clear()
        self.adapter.performed.clear()

    def assert_enqueued_with(
        self,
        job: JobSelector | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        at: float | dt.datetime | dt.timedelta | _Unset | None = UNSET,
        tolerance: float = AT_TOLERANCE,
    ) -> JobRecord:
        """The first enqueued job that matches every criterion given; AssertionError if none does.

        ``args`` and ``kwargs`` must equal the job's (deserialized) arguments
        exactly; ``at`` is epoch seconds, a datetime, or a timedelta from now,
        matched within ``tolerance`` seconds; ``at=None`` asserts a job to run now.
        """
        records = self.enqueued_jobs
        return _first_match(records, "enqueued", lambda: self._listing(records),
                            _criteria(job, args, kwargs, queue, at), at, tolerance)

    def assert_performed_with(
        self,
        job: JobSelector | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
    ) -> JobRecord:
        """The first performed job that matches every criterion given, as ``assert_enqueued_with``
        matches them; AssertionError, listing the performed jobs, if none does."""
        records = self.performed_jobs
        return _first_match(records, "performed", lambda: _performed_listing(records),
                            _criteria(job, args, kwargs, queue, UNSET), UNSET, AT_TOLERANCE)

    def assert_enqueued_jobs(self, count: int, job: JobSelector | None = None) -> None:
        """Exactly ``count`` jobs (of ``job``, if given) are enqueued."""
        records = self.enqueued_jobs
        found = _select(records, job)
        if len(found) != count:
            kind = f" {_name(job)}" if job is not None else ""
            raise AssertionError(f"expected {count}{kind} enqueued job(s), found {len(found)}\n"
                                 f"{self._listing(records)}")

    def assert_no_enqueued_jobs(self, job: JobSelector | None = None) -> None:
        """No job (of ``job``, if given) is enqueued."""
        self.assert_enqueued_jobs(0, job)

    def assert_no_performed_jobs(self, job: JobSelector | None = None) -> None:
        """No job (of ``job``, if given) has been performed."""
        self.assert_performed_jobs(0, job)

    def assert_performed_jobs(self, count: int, job: JobSelector | None = None) -> None:
        """Exactly ``count`` jobs (of ``job``, if given) have been performed."""
        records = self.performed_jobs
        found = _select(records, job)
        if len(found) != count:
            kind = f" {_name(job)}" if job is not None else ""
            raise AssertionError(f"expected {count}{kind} performed job(s), found {len(found)}\n"
                                 f"{_performed_listing(records)}")

    def perform_enqueued_jobs(
        self, only: JobSelector | Iterable[JobSelector] | None = None, limit: int = DEFAULT_LIMIT, *,
        queue: str | None = None, at: float | dt.datetime | dt.timedelta | None = None,
    ) -> Performing:
        """Perform the enqueued jobs, oldest first, scheduled ones too; only those of ``only``
        (a job, a name or several), of ``queue`` and due by ``at`` (a datetime, epoch seconds
        or a timedelta from now), when given, as Active Job's helper filters them.

        Jobs that these jobs enqueue are performed as well, until none is left;
        more than ``limit`` jobs is taken for jobs enqueuing each other forever
        and raises RuntimeError (a job that schedules its own next run stops at
        ``at=...``: its next run is not due yet). Jobs run as in a worker
        (callbacks, ``discard_on``, ``retry_on``), but any other failure is
        raised here, and that job is no longer enqueued.
        ``with jobs.perform_enqueued_jobs():`` then also performs each job
        enqueued in the block, as it is enqueued.
        """
        accepts = _selector(only, queue, _epoch(at))
        adapter = self.adapter
        performed: list[JobRecord] = []
        while True:
            index = next((i for i, payload in enumerate(adapter.enqueued) if accepts(payload)), None)
            if index is None:
                return Performing(adapter, accepts, limit, performed)
            if len(performed) >= limit:
                raise RuntimeError(_too_many(limit, adapter.enqueued[index]))
            payload = adapter.enqueued.pop(index)
            adapter.perform(payload)
            performed.append(JobRecord(payload))

    def _listing(self, records: list[JobRecord]) -> str:
        lines = [f"enqueued jobs ({len(records)}):" if records else "no jobs are enqueued"]
        lines += [f"  {record!r}" for record in records]
        if self.adapter.performed:
            lines.append(f"({len(self.adapter.performed)} performed job(s) are not listed)")
        return "\n".join(lines)


@contextlib.contextmanager
def test_adapter() -> Iterator[Jobs]:
    """Send every ``perform_later`` in the block to a fresh test adapter; restore the previous one after.

    Nestable: an inner block has its own adapter and gives the outer one back.
    """
    previous = adapters._current
    adapter = RecordingAdapter()
    adapters.use(adapter)
    try:
        yield Jobs(adapter)
    finally:
        if previous is None:
            adapters._current = None
        else:
            adapters.use(previous)


test_adapter.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test to collect


def _everything(payload: Payload) -> bool:
    return True


def _name(job: JobSelector) -> str:
    return job if isinstance(job, str) else job.job_name


def _selector(only: JobSelector | Iterable[JobSelector] | None, queue: str | None = None,
              due: float | None = None) -> Callable[[Payload], bool]:
    if only is None and queue is None and due is None:
        return _everything
    names: set[str] | None = None
    if only is not None:
        names = {_name(only)} if isinstance(only, (str, type)) else {_name(job) for job in only}

    def accepts(payload: Payload) -> bool:
        if names is not None and JobRecord(payload).job_name not in names:
            return False
        if queue is not None and payload.get("queue") != queue:
            return False
        return due is None or float(payload.get("at") or 0) <= due

    return accepts


def _select(records: list[JobRecord], job: JobSelector | None) -> list[JobRecord]:
    return records if job is None else [record for record in records if record.job_name == _name(job)]


def _epoch(at: float | dt.datetime | dt.timedelta | None) -> float | None:
    if at is None:
        return None
    if isinstance(at, dt.datetime):
        return at.timestamp()
    if isinstance(at, dt.timedelta):
        return time.time() + at.total_seconds()
    return float(at)


def _matches(record: JobRecord, criteria: dict[str, Any], due: float | None, tolerance: float) -> bool:
    if "job" in criteria and record.job_name != criteria["job"]:
        return False
    if "queue" in criteria and record.queue != criteria["queue"]:
        return False
    if "at" in criteria:
        at = record.payload.get("at")
        if (at is None) != (due is None):
            return False
        if at is not None and due is not None and abs(float(at) - due) > tolerance:
            return False
    if "args" in criteria or "kwargs" in criteria:
        try:
            args, kwargs = record.args, record.kwargs
        except Exception:  # unreadable (a deleted record, say): it matches no arguments
            return False
        if "args" in criteria and not _same(args, criteria["args"], serialize_args):
            return False
        if "kwargs" in criteria and not _same(kwargs, criteria["kwargs"], serialize_kwargs):
            return False
    return True


def _same(found: Any, expected: Any, serialize: Callable[[Any], Any]) -> bool:
    """Equal, or equal once serialized: a record located again for the assertion is another
    object of the same row (SQLAlchemy, a plain session), alike by its global ID, as Active
    Job's assertions compare serialized arguments."""
    if found == expected:
        return True
    try:
        return bool(serialize(found) == serialize(expected))
    except Exception:  # an expected value kiq cannot serialize (a matcher object) matched as it is
        return False


def _criteria(job: JobSelector | None, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
              queue: str | None, at: Any) -> dict[str, Any]:
    criteria: dict[str, Any] = {}
    if job is not None:
        criteria["job"] = _name(job)
    if args is not None:
        criteria["args"] = list(args)
    if kwargs is not None:
        criteria["kwargs"] = dict(kwargs)
    if queue is not None:
        criteria["queue"] = queue
    if at is not UNSET:
        criteria["at"] = at
    return criteria


def _first_match(records: list[JobRecord], kind: str, listing: Callable[[], str], criteria: dict[str, Any],
                 at: Any, tolerance: float) -> JobRecord:
    due = _epoch(at) if at is not UNSET else None
    for record in records:
        if _matches(record, criteria, due, tolerance):
            return record
    wanted = ", ".join(f"{key}={_show(key, value)}" for key, value in criteria.items()) or "anything"
    raise AssertionError(f"no {kind} job matches {wanted}\n{listing()}")


def _performed_listing(records: list[JobRecord]) -> str:
    listing = "".join(f"\n  {record!r}" for record in records)
    return f"performed jobs ({len(records)}):{listing or ' none'}"


def _show(key: str, value: Any) -> str:
    if key == "job":
        return str(value)
    if key == "at":
        if isinstance(value, dt.timedelta):
            return f"now + {value}"
        if isinstance(value, (int, float)):
            value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
        if isinstance(value, dt.datetime):
            return value.isoformat(timespec="milliseconds")
        return "None (to run now)"
    return repr(value)


def _too_many(limit: int, payload: Payload) -> str:
    return (f"performed {limit} jobs and jobs are still enqueued (next: {JobRecord(payload)!r}); "
            "do jobs enqueue each other forever? Pass a higher limit if not")


try:
    import pytest
except ImportError:  # kiq.testing works without pytest; only the fixture needs it
    pass
else:

    @pytest.fixture
    def kiq_jobs() -> Iterator[Jobs]:
        """The test adapter for this test, as a ``kiq.testing.Jobs`` helper."""
        with test_adapter() as jobs:
            yield jobs

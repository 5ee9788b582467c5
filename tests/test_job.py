"""Unit tests for kiq.job: the registry of wire names, set() options and perform_now."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kiq
import kiq.client
from kiq import job as job_module
from kiq import registry as registry_module
from kiq.job import JobNameError, lookup, registered


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    """Leave the process-wide registry as each test found it."""
    saved = dict(registry_module._registry)
    yield
    registry_module._registry.clear()
    registry_module._registry.update(saved)


class JobTestMailer(kiq.Job):
    queue = "mail"
    retry = 7

    def perform(self, to: str, subject: str = "hi") -> str:
        return f"{to}:{subject}"


# Registry


def test_wire_name_defaults_to_the_class_name():
    class JobTestDefaultName(kiq.Job):
        def perform(self) -> None:
            pass

    assert JobTestDefaultName.job_name == "JobTestDefaultName"
    assert lookup("JobTestDefaultName") is JobTestDefaultName
    assert registered()["JobTestDefaultName"] is JobTestDefaultName


def test_job_name_overrides_the_wire_name():
    class JobTestInvoice(kiq.Job):
        job_name = "Billing::InvoiceJob"

        def perform(self) -> None:
            pass

    assert lookup("Billing::InvoiceJob") is JobTestInvoice
    assert lookup("JobTestInvoice") is None


def test_subclass_gets_its_own_name_not_its_parents_override():
    class JobTestBase(kiq.Job):
        job_name = "Ruby::BaseJob"

        def perform(self) -> None:
            pass

    class JobTestChild(JobTestBase):
        pass

    assert JobTestChild.job_name == "JobTestChild"
    assert lookup("Ruby::BaseJob") is JobTestBase
    assert lookup("JobTestChild") is JobTestChild


def module_class(name: str, module: str) -> type[kiq.Job]:
    """A job class as a module of that name would define it at its top level."""
    return type(name, (kiq.Job,), {"__module__": module, "__qualname__": name, "perform": lambda self: None})


def test_two_classes_with_one_wire_name_fail_at_class_creation():
    first = module_class("JobTestTaken", "app.billing")
    with pytest.raises(JobNameError, match=r"app\.billing\.JobTestTaken and app\.mail\.JobTestTaken"):
        module_class("JobTestTaken", "app.mail")
    assert lookup("JobTestTaken") is first


def test_a_local_class_defined_again_elsewhere_replaces_the_first():
    """Two tests that each define a local SendJob: the latest definition is the one in use."""
    def here() -> type[kiq.Job]:
        class JobTestLocal(kiq.Job):
            def perform(self) -> None:
                pass

        return JobTestLocal

    def elsewhere() -> type[kiq.Job]:
        class JobTestLocal(kiq.Job):
            def perform(self) -> None:
                pass

        return JobTestLocal

    here()
    second = elsewhere()
    assert lookup("JobTestLocal") is second
    module_class("JobTestTopLevel", "app.one")
    with pytest.raises(JobNameError):  # a local class does not shadow one a worker imports

        class JobTestTopLevel(kiq.Job):
            def perform(self) -> None:
                pass


def test_a_base_class_without_perform_is_not_registered():
    """Two packages' ApplicationJob bases do not collide, and no payload can name one."""
    bases = [type("JobTestApplicationJob", (kiq.Job,), {"__module__": module})
             for module in ("shop.jobs", "billing.jobs")]
    assert lookup("JobTestApplicationJob") is None

    class JobTestConcrete(bases[1]):  # type: ignore[misc, valid-type]
        def perform(self) -> None:
            pass

    assert lookup("JobTestConcrete") is JobTestConcrete


def test_job_name_colliding_with_another_class_name_fails():
    class JobTestOriginal(kiq.Job):
        def perform(self) -> None:
            pass

    with pytest.raises(JobNameError) as raised:

        class JobTestImpostor(kiq.Job):
            job_name = "JobTestOriginal"

            def perform(self) -> None:
                pass

    message = str(raised.value)
    assert "JobTestOriginal" in message and "JobTestImpostor" in message
    assert lookup("JobTestOriginal") is JobTestOriginal


def test_duplicate_name_error_is_a_public_type():
    assert kiq.JobNameError is JobNameError
    with pytest.raises(kiq.JobNameError):

        class JobTestDuplicateOfMailer(kiq.Job):
            job_name = "JobTestMailer"

            def perform(self) -> None:
                pass


def test_redefining_the_same_module_and_qualname_replaces_the_class():
    def define() -> type[kiq.Job]:
        class JobTestReloaded(kiq.Job):
            def perform(self) -> None:
                pass

        return JobTestReloaded

    first = define()
    second = define()
    assert first is not second
    assert first.__qualname__ == second.__qualname__
    assert lookup("JobTestReloaded") is second


def test_empty_job_name_is_refused():
    with pytest.raises(JobNameError):

        class JobTestNameless(kiq.Job):
            job_name = ""

            def perform(self) -> None:
                pass


# set() options


def test_wait_in_seconds():
    before = time.time()
    at = JobTestMailer.set(wait=30).at()
    assert before + 30 <= at <= time.time() + 30


def test_wait_as_timedelta():
    before = time.time()
    at = JobTestMailer.set(wait=dt.timedelta(hours=1, milliseconds=500)).at()
    assert before + 3600.5 <= at <= time.time() + 3600.5


def test_wait_until_datetime():
    when = dt.datetime(2040, 1, 2, 3, 4, 5, 250000, tzinfo=dt.timezone.utc)
    assert JobTestMailer.set(wait_until=when).at() == when.timestamp() == 2209086245.25


def test_wait_until_epoch_seconds():
    assert JobTestMailer.set(wait_until=2209086245.25).at() == 2209086245.25
    assert JobTestMailer.set(wait_until=2209086245).at() == 2209086245.0


def test_no_wait_means_now():
    assert JobTestMailer.set(queue="x").at() is None


def test_set_wait_schedules_the_job(client, r):
    before = time.time()
    handle = JobTestMailer.set(wait=dt.timedelta(minutes=5)).perform_later("ann")
    [(raw, score)] = r.zrange("schedule", 0, -1, withscores=True)
    payload = json.loads(raw)
    assert before + 300 <= score <= time.time() + 300
    assert score == handle.at and "at" not in payload
    assert payload["class"] == "JobTestMailer"
    assert payload["queue"] == "mail"


def test_set_wait_until_schedules_at_that_time(client, r):
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=1)
    JobTestMailer.set(wait_until=when).perform_later("bob")
    [(_, score)] = r.zrange("schedule", 0, -1, withscores=True)
    assert score == when.timestamp()


def test_set_wait_until_in_the_past_enqueues_now(client, r):
    JobTestMailer.set(wait_until=time.time() - 60).perform_later("late")
    assert r.zcard("schedule") == 0
    assert r.llen("queue:mail") == 1


def test_set_queue_overrides_the_class_queue(client, r):
    handle = JobTestMailer.set(queue="urgent").perform_later("cy", subject="now")
    payload = json.loads(r.rpop("queue:urgent"))
    assert handle.queue == "urgent" == payload["queue"]
    assert payload["args"] == ["cy"] and payload["kwargs"] == {"subject": "now"}
    assert r.smembers("queues") == {"urgent"}
    assert r.llen("queue:mail") == 0


@pytest.mark.parametrize("retry", [False, 0, 2, True])
def test_set_retry_overrides_the_class_retry(client, r, retry):
    JobTestMailer.set(retry=retry).perform_later("dee")
    payload = json.loads(r.rpop("queue:mail"))
    assert payload["retry"] == retry
    assert type(payload["retry"]) is type(retry)


def test_class_defaults_without_set(client, r):
    JobTestMailer.perform_later("eve")
    payload = json.loads(r.rpop("queue:mail"))
    assert payload["queue"] == "mail" and payload["retry"] == 7


def test_set_options_apply_to_bulk(client, r):
    jids = JobTestMailer.set(queue="bulkmail", retry=1).perform_bulk([["a"], ["b"]])
    jobs = [json.loads(raw) for raw in reversed(r.lrange("queue:bulkmail", 0, -1))]
    assert [job["jid"] for job in jobs] == jids
    assert all(job["retry"] == 1 for job in jobs)


# perform_now


def test_perform_now_runs_inline_without_redis(monkeypatch):
    monkeypatch.setenv("KIQ_REDIS_URL", "redis://127.0.0.1:1/0")
    kiq.client._default = None
    calls: list[Any] = []

    class JobTestInline(kiq.Job):
        def perform(self, a: int, *, b: int = 0) -> int:
            calls.append((a, b))
            return a + b

    try:
        assert JobTestInline.perform_now(2, b=3) == 5
        assert calls == [(2, 3)]
        assert kiq.client._default is None  # no client was even built
    finally:
        kiq.client._default = None


def test_perform_now_lets_the_jobs_exception_through():
    class JobTestBoom(kiq.Job):
        def perform(self) -> None:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        JobTestBoom.perform_now()


def test_perform_without_definition_raises():
    class JobTestEmpty(kiq.Job):
        pass

    with pytest.raises(NotImplementedError):
        JobTestEmpty.perform_now()


# Arguments are checked against perform in the caller


def test_a_misspelt_keyword_fails_in_the_caller_and_enqueues_nothing(client, r):
    with pytest.raises(TypeError) as raised:
        JobTestMailer.perform_later("ada@example.com", subjet="welcome")
    assert str(raised.value) == ("JobTestMailer.perform(to, subject='hi'): "
                                 "got an unexpected keyword argument 'subjet'")
    with pytest.raises(TypeError, match="too many positional arguments"):
        JobTestMailer.set(queue="other", wait=60).perform_later("a", "b", "c")
    with pytest.raises(TypeError, match="missing a required argument: 'to'"):
        JobTestMailer.perform_later(subject="no one")
    assert r.keys("*") == []
    JobTestMailer.perform_later(to="ada@example.com", subject="welcome")
    assert r.llen("queue:mail") == 1


def test_perform_bulk_names_the_index_of_the_bad_job_and_enqueues_none(client, r):
    with pytest.raises(TypeError) as raised:
        JobTestMailer.perform_bulk([["a"], ["b", "s"], ["c", "s", "extra"], []])
    assert str(raised.value) == ("args_list[2]: JobTestMailer.perform(to, subject='hi'): "
                                 "too many positional arguments")
    with pytest.raises(TypeError, match=r"args_list\[1\]: a job's arguments are a list or tuple, not str"):
        JobTestMailer.set(queue="other").perform_bulk([["a"], "b"])
    assert r.keys("*") == []
    assert len(JobTestMailer.perform_bulk(iter([["a"], ("b", "s")]))) == 2


@pytest.mark.parametrize("adapter", ["redis", "inline", "test"])
@pytest.mark.parametrize("hooks", [False, True])
def test_perform_bulk_names_the_list_whose_argument_cannot_be_stored(client, r, adapter, hooks):
    """Both ways a bulk enqueue builds its jobs (one hash each, with enqueue hooks; one shared
    hash without), and the local adapters'."""
    from kiq import adapters, middleware
    from kiq.serialize import SerializationError

    class Hook(middleware.Middleware):
        def before_enqueue(self, payload: dict[str, object]) -> None:
            pass

    hook = Hook()
    if hooks:
        middleware.add(hook)
    assert middleware.enqueue_hooks() is hooks
    adapters.use(adapter)
    try:
        with pytest.raises(SerializationError) as raised:
            JobTestMailer.perform_bulk([["a"], ["b", "s"], ["c", {"when": object()}]])
    finally:
        if hooks:
            middleware.remove(hook)
        adapters.use("redis")
    assert str(raised.value) == "args_list[2]: args[1]['when']: cannot serialize object of type object"
    assert r.keys("*") == []


@pytest.mark.parametrize("adapter", ["async", "inline", "test"])
def test_every_adapter_checks_the_arguments(adapter):
    from kiq import adapters

    used = adapters.use(adapter)
    try:
        with pytest.raises(TypeError, match="unexpected keyword argument 'subjet'"):
            JobTestMailer.perform_later("a", subjet="x")
        with pytest.raises(TypeError, match=r"args_list\[0\]: .*missing a required argument"):
            JobTestMailer.perform_bulk([[]])
        if isinstance(used, adapters.TestAdapter):
            assert used.enqueued == []
    finally:
        adapters.use("redis")


class JobTestStatic(kiq.Job):
    @staticmethod
    def perform(value: int) -> None:
        pass


class JobTestVarArgs(kiq.Job):
    def perform(*args: Any) -> None:  # self arrives in args
        pass


class JobTestAsync(kiq.Job):
    async def perform(self, value: int, *, flag: bool) -> None:
        pass


def test_the_check_reads_perform_as_the_worker_calls_it(client, r):
    JobTestStatic.perform_later(1)
    with pytest.raises(TypeError, match="too many positional"):
        JobTestStatic.perform_later(1, 2)
    JobTestVarArgs.perform_later(1, 2, 3)
    JobTestAsync.perform_later(1, flag=True)
    with pytest.raises(TypeError, match=r"missing a required (keyword-only )?argument: 'flag'"):
        JobTestAsync.perform_later(1)
    assert r.llen("queue:default") == 3


def _shapes() -> Iterator[Any]:
    """perform signatures of every parameter kind, as functions without self."""
    sources = [
        "def f(): pass", "def f(a): pass", "def f(a, b=1): pass", "def f(a, /, b): pass",
        "def f(a, /, b=2, *, c): pass", "def f(a=1, /, *args, c=3, **kw): pass", "def f(*, c, d=4): pass",
        "def f(a, *args): pass", "def f(a, **kw): pass", "def f(a, /, **kw): pass",
        "def f(a, b, /, c=3): pass",
    ]
    for source in sources:
        namespace: dict[str, Any] = {}
        exec(source, namespace)
        yield namespace["f"]


def test_the_quick_check_never_lets_through_a_call_that_perform_refuses():
    """Every call of a few arguments to every shape of signature, against a real call."""
    import inspect
    import itertools

    names = ["a", "b", "c", "d", "kw", "e"]
    for function in _shapes():
        class Shaped(kiq.Job):
            perform = staticmethod(function)

        arguments = job_module.arguments_of(Shaped)
        signature = inspect.signature(function)
        for count in range(4):
            for keys in itertools.chain.from_iterable(itertools.combinations(names, k) for k in range(4)):
                args, kwargs = tuple(range(count)), dict.fromkeys(keys, 0)
                try:
                    function(*args, **kwargs)
                    runs = True
                except TypeError:
                    runs = False
                assert not arguments.accepts(args, kwargs) or runs, (signature, args, kwargs)
                if runs:
                    arguments.check(args, kwargs)
                else:
                    with pytest.raises(TypeError):
                        arguments.check(args, kwargs)


# Sidekiq's backtrace option


class JobTestTraced(kiq.Job):
    backtrace = True

    def perform(self, value: int) -> None:
        pass


def test_backtrace_option_from_the_class_and_from_set(client, r):
    JobTestMailer.perform_later("a")
    JobTestTraced.perform_later(1)
    JobTestTraced.set(backtrace=3).perform_later(2)
    JobTestTraced.set(backtrace=False).perform_later(3)
    JobTestMailer.set(backtrace=True).perform_bulk([["b"], ["c"]])
    mail = [json.loads(raw) for raw in r.lrange("queue:mail", 0, -1)]
    traced = {json.loads(raw)["args"][0]: json.loads(raw) for raw in r.lrange("queue:default", 0, -1)}
    assert ["backtrace" in job for job in mail] == [True, True, False]
    assert all(job["backtrace"] is True for job in mail[:2])
    assert traced[1]["backtrace"] is True and traced[2]["backtrace"] == 3
    assert "backtrace" not in traced[3]


@pytest.mark.parametrize("value", ["yes", -1, 2.5, None])
def test_a_backtrace_option_sidekiq_would_not_read_is_refused(value):
    reason = " is True, False or a number of lines, not "
    if value is not None:
        with pytest.raises(TypeError, match=re.escape(f"set(backtrace=...){reason}{value!r}")):
            JobTestMailer.set(backtrace=value)
    with pytest.raises(TypeError, match=re.escape(f"JobTestBadTrace.backtrace{reason}{value!r}")):
        class JobTestBadTrace(kiq.Job):
            backtrace = value  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("enqueue", "message"),
    [(lambda: JobTestMailer.set(queue=5).perform_later("a"), "queue is a non-empty string, not 5"),
     (lambda: JobTestMailer.set(retry="yes").perform_later("a"), "retry is True, False or a number"),
     (lambda: JobTestMailer.set(retry=2.5).perform_later("a"), r"not 2\.5"),
     (lambda: JobTestMailer.set(retry=-3).perform_later("a"), "not -3"),
     (lambda: JobTestMailer.set(retry="yes").perform_bulk([["a"]]), "retry is True, False"),
     (lambda: JobTestMailer.set(queue="").perform_later("a"), "queue is a non-empty string, not ''"),
     (lambda: kiq.Client().enqueue("", []), "class name is a non-empty string"),
     (lambda: JobTestMailer.perform_bulk([["a"], ["b"]], batch_size=-1), "batch_size is a whole number"),
     (lambda: JobTestMailer.perform_bulk([["a"]], batch_size=0), "1 or more, not 0"),
     (lambda: kiq.Client().enqueue_bulk("X", [["a"]], batch_size=1.5), "not 1.5"),
     (lambda: JobTestMailer.set(wait="5").perform_later("a"), "wait is a number of seconds or a timedelta"),
     (lambda: JobTestMailer.set(wait=True).perform_later("a"), "not True"),
     (lambda: JobTestMailer.set(wait_until=dt.date(2030, 1, 1)).perform_later("a"),
      "wait_until is a datetime or epoch seconds"),
     (lambda: JobTestMailer.set(wait_until="2030").perform_bulk([["a"]]), "wait_until is a datetime")],
)
def test_a_queue_or_retry_no_worker_could_follow_is_refused_in_the_caller(client, r, enqueue, message):
    with pytest.raises(TypeError, match=message):
        enqueue()
    assert r.keys("*") == []


@pytest.mark.parametrize("adapter", ["redis", "test", "inline", "async"])
@pytest.mark.parametrize("options", [
    {"wait": float("inf")}, {"wait": float("nan")}, {"wait": 1e20}, {"wait": dt.timedelta.max},
    {"wait_until": float("-inf")}, {"wait_until": float("nan")}, {"wait_until": dt.datetime(9999, 1, 1)},
    {"wait_until": 1e300},
])
def test_a_time_no_adapter_could_keep_is_refused_alike_by_every_adapter(client, r, adapter, options):
    """An infinite wait was scheduled at score inf by Redis (which Sidekiq's API cannot read),
    failed the test adapter's records, ended the async adapter's timer (no later scheduled job
    of the process ran), and NaN ran at once."""
    kiq.adapters.use(adapter)
    try:
        with pytest.raises(ValueError, match="at most a century from now"):
            JobTestMailer.set(**options).perform_later("a")
    finally:
        kiq.adapters.use("redis")
    assert r.keys("*") == []


def test_a_keyword_argument_named_cls_reaches_perform(client, r):
    class Ranked(kiq.Job):
        queue = "ranked"

        def perform(self, cls: str = "", **kwargs: Any) -> None: ...

    Ranked.perform_later(cls="gold")
    Ranked.set(queue="ranked").perform_later(cls="silver", rank=2)
    Ranked.perform_now(cls="bronze")
    kwargs = [json.loads(raw)["kwargs"] for raw in r.lrange("queue:ranked", 0, -1)]
    assert sorted(kwargs, key=str) == sorted([{"cls": "gold"}, {"cls": "silver", "rank": 2}], key=str)

"""kiq.otel: OpenTelemetry spans for enqueues and runs, in-process with the SDK's in-memory
exporter and in real workers (tests/otel_export.py writes their spans to Redis), with the trace
context carried in the job hash across kiq and Ruby Sidekiq."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is not installed: "
                    "`make install` installs kiq[dev], which has it")

import otel_jobs
import redis
from conftest import RedisServer, free_port, process, run_python, wait_for
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import kiq
from kiq import adapters, middleware
from kiq.callbacks import discard_on
from kiq.connection import connect
from kiq.otel import KiqInstrumentor, Tracing

SPANS = "otel:spans"  # where tests/otel_export.py writes a worker's spans (importing it would set this
                      # process's global tracer provider)
RUBY_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
RUBY_SPAN = "00f067aa0ba902b7"


class Traced:
    """kiq instrumented with a tracer provider of its own, whose finished spans the test reads."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def instrument(self, **options: Any) -> None:
        KiqInstrumentor().instrument(tracer_provider=self.provider, **options)

    def spans(self, kind: SpanKind) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.kind == kind]


def jid_of(span: ReadableSpan) -> Any:
    return (span.attributes or {})["messaging.message.id"]


@pytest.fixture
def traced() -> Iterator[Traced]:
    yield Traced()
    KiqInstrumentor().uninstrument()
    adapters.use("redis")


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return hexes(context)


def hexes(context: trace.SpanContext) -> tuple[str, str]:
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def carried(payload: dict[str, Any]) -> tuple[str, str]:
    """The trace and span ids of a job hash's ``traceparent``."""
    version, trace_id, span_id, _flags = payload["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id


def links(span: ReadableSpan) -> list[tuple[str, str]]:
    return [hexes(link.context) for link in span.links]


def enqueued_with_test_adapter(job: type[kiq.Job], *args: Any) -> dict[str, Any]:
    """The job hash ``perform_later`` makes, as a worker would read it."""
    test = adapters.use("test")
    job.perform_later(*args)
    return test.enqueued[-1]  # type: ignore[attr-defined, no-any-return]


# -- enqueues -------------------------------------------------------------


def test_an_enqueue_is_a_producer_span_whose_context_the_job_carries(client, r, traced):
    traced.instrument()
    with traced.tracer.start_as_current_span("request") as request:
        jid = client.enqueue("TracedJob", ["a"]).jid
    [send] = traced.spans(SpanKind.PRODUCER)
    assert send.name == "send default"
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "sidekiq", "messaging.operation.type": "send", "messaging.operation.name": "send",
        "messaging.destination.name": "default", "messaging.message.id": jid,
        "messaging.sidekiq.job_class": "TracedJob",
    }
    [payload] = [json.loads(raw) for raw in r.lrange("queue:default", 0, -1)]
    assert carried(payload) == ids(send)  # a top-level key, where Ruby's instrumentation reads it


def test_bulk_and_scheduled_enqueues_get_a_span_per_job_named_by_class(client, r, traced):
    traced.instrument(span_naming="job_class")
    jids = client.enqueue_bulk("TracedJob", [["a"], ["b"], ["c"]], batch_size=2)
    later = client.enqueue("TracedJob", ["later"], queue="low", at=time.time() + 60).jid
    sends = {jid_of(span): span for span in traced.spans(SpanKind.PRODUCER)}
    assert set(sends) == {*jids, later}
    assert {span.name for span in sends.values()} == {"send TracedJob"}
    assert sends[later].attributes["messaging.destination.name"] == "low"
    stored = [json.loads(raw) for raw in [*r.lrange("queue:default", 0, -1), *r.zrange("schedule", 0, -1)]]
    assert {payload["jid"]: carried(payload) for payload in stored} == {
        jid: ids(span) for jid, span in sends.items()}


def test_a_push_that_fails_is_an_error_span_and_the_error_reaches_the_caller(traced):
    traced.instrument()
    nowhere = kiq.Client(connection=connect(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(redis.ConnectionError):
        nowhere.enqueue("TracedJob", ["a"])
    [send] = traced.spans(SpanKind.PRODUCER)
    assert send.status.status_code == StatusCode.ERROR
    assert [event.name for event in send.events] == ["exception"]
    assert send.attributes["error.type"] == "redis.exceptions.ConnectionError"


@pytest.mark.parametrize("where", ["on_start", "on_end"])
def test_a_tracer_that_raises_fails_neither_the_enqueue_nor_the_run(client, r, traced, where):
    """The app's span processor has a bug: jobs are pushed and run as without tracing."""
    from otel_faults import RaisingProcessor

    traced.provider.add_span_processor(RaisingProcessor(where))
    traced.instrument()
    client.enqueue("TracedJob", ["a"])
    raw = r.lindex("queue:default", 0)
    assert json.loads(raw)["class"] == "TracedJob"
    outcome = process("default", raw)
    assert outcome.failed is False


# -- runs -----------------------------------------------------------------


def test_a_run_starts_a_trace_linked_to_its_enqueue_by_default(traced):
    traced.instrument()
    payload = enqueued_with_test_adapter(otel_jobs.TracedJob, "a")
    assert process("default", json.dumps(payload)).failed is False
    [send], [run] = traced.spans(SpanKind.PRODUCER), traced.spans(SpanKind.CONSUMER)
    assert run.name == "process default" and run.parent is None
    assert ids(run)[0] != ids(send)[0] and links(run) == [ids(send)]
    assert dict(run.attributes or {}) == {
        "messaging.system": "sidekiq", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": "default",
        "messaging.message.id": payload["jid"], "messaging.sidekiq.job_class": "TracedJob",
    }
    assert run.status.status_code == StatusCode.UNSET


def test_the_async_adapter_traces_its_runs_too(traced):
    traced.instrument()
    pool = adapters.use("async")
    jid = otel_jobs.TracedJob.perform_later("a").jid
    assert pool.drain()  # type: ignore[attr-defined]
    [send], [run] = traced.spans(SpanKind.PRODUCER), traced.spans(SpanKind.CONSUMER)
    assert jid_of(send) == jid_of(run) == jid and links(run) == [ids(send)]


SEEN: list[Any] = []


class CurrentSpanJob(kiq.Job):
    def perform(self) -> None:
        SEEN.append(trace.get_current_span().get_span_context())


def test_a_first_run_is_a_child_of_its_enqueue_in_child_style_and_current_while_it_runs(traced):
    traced.instrument(propagation_style="child", span_naming="job_class")
    SEEN.clear()
    process("default", json.dumps(enqueued_with_test_adapter(CurrentSpanJob)))
    [send], [run] = traced.spans(SpanKind.PRODUCER), traced.spans(SpanKind.CONSUMER)
    assert run.name == "process CurrentSpanJob"
    assert run.parent is not None and hexes(run.parent) == ids(send) and ids(run)[0] == ids(send)[0]
    assert run.links == ()
    assert [run.get_span_context()] == SEEN  # the app's own spans in perform are its children


@pytest.mark.parametrize("style", ["link", "child"])
def test_a_failed_run_is_an_error_span_and_its_retry_a_new_trace_linked_to_the_enqueue(traced, style):
    traced.instrument(propagation_style=style)
    payload = enqueued_with_test_adapter(otel_jobs.FailsOnceJob)
    outcome = process("default", json.dumps(payload))
    assert outcome.action == "retry"
    assert process("default", outcome.payload).failed is False
    [send], [first, retry] = traced.spans(SpanKind.PRODUCER), traced.spans(SpanKind.CONSUMER)
    assert first.status.status_code == StatusCode.ERROR
    assert first.status.description == "ValueError: first run fails"
    assert first.attributes["error.type"] == "ValueError"
    [event] = first.events
    assert event.name == "exception" and event.attributes["exception.message"] == "first run fails"
    assert (ids(first)[0] == ids(send)[0]) is (style == "child")
    assert ids(retry)[0] not in (ids(send)[0], ids(first)[0]) and links(retry) == [ids(send)]
    assert retry.attributes["messaging.sidekiq.retry_count"] == 0
    assert retry.status.status_code == StatusCode.UNSET


@discard_on(KeyError)
class DiscardedOnKeyErrorJob(kiq.Job):
    def perform(self) -> None:
        raise KeyError("gone")


@pytest.mark.parametrize(("job", "action", "description"), [
    (otel_jobs.FailsForGoodJob, "dead", "RuntimeError: doomed"),
    (DiscardedOnKeyErrorJob, "", "KeyError: 'gone'"),
])
def test_a_job_that_dies_or_is_discarded_is_an_error_span(traced, job, action, description):
    traced.instrument()
    outcome = process("default", json.dumps(enqueued_with_test_adapter(job)))
    assert outcome.failed and outcome.action == action
    [run] = traced.spans(SpanKind.CONSUMER)
    assert run.status.status_code == StatusCode.ERROR and run.status.description == description
    assert [event.name for event in run.events] == ["exception"]


@pytest.mark.parametrize("context", [{"traceparent": 42}, {"traceparent": "00-garbage-01"},
                                     {"traceparent": ["00", "x"], "tracestate": {"a": 1}}])
def test_a_trace_context_that_is_not_one_starts_an_unlinked_trace(traced, context):
    traced.instrument(propagation_style="child")
    payload = {**enqueued_with_test_adapter(otel_jobs.TracedJob, "a"), **context}
    assert process("default", json.dumps(payload)).failed is False
    [run] = traced.spans(SpanKind.CONSUMER)
    assert run.parent is None and run.links == ()


def test_instrument_adds_one_member_and_uninstrument_takes_it_out(traced):
    traced.instrument()
    traced.instrument()
    assert [type(m) for m in middleware.builtins()].count(Tracing) == 1
    KiqInstrumentor().uninstrument()
    assert Tracing not in [type(m) for m in middleware.builtins()]
    assert "traceparent" not in enqueued_with_test_adapter(otel_jobs.TracedJob, "a")
    assert not KiqInstrumentor().is_instrumented_by_opentelemetry
    with pytest.raises(ValueError, match="span_naming must be one of queue, job_class"):
        traced.instrument(span_naming="class")


def redis_py_imports(redis_url: str) -> list[str]:
    """The modules ``otel_modules()`` finds after importing redis-py alone: where the OpenTelemetry
    SDK is installed, redis-py 8 imports it for its own metrics."""
    return json.loads(run_python("import json, redis, otel_jobs; print(json.dumps(otel_jobs.otel_modules()))",
                                 redis_url).stdout)  # type: ignore[no-any-return]


def test_kiq_and_its_client_import_no_opentelemetry_without_tracing(redis_server):
    done = run_python("""
import json
import kiq, kiq.worker, kiq.cli, otel_jobs
kiq.Client().enqueue("TracedJob", ["a"])
print(json.dumps(otel_jobs.otel_modules()))
""", redis_server.url)
    assert json.loads(done.stdout) == redis_py_imports(redis_server.url)


# -- real workers ---------------------------------------------------------


def worker_spans(r: redis.Redis, count: int, kind: str = "CONSUMER") -> list[dict[str, Any]]:
    """The first ``count`` spans of ``kind`` the workers exported (waits for them)."""
    def found() -> list[dict[str, Any]]:
        spans = [span for span in map(json.loads, r.lrange(SPANS, 0, -1)) if span["kind"] == kind]
        return spans if len(spans) >= count else []

    return wait_for(found, timeout=20)  # type: ignore[no-any-return]


def logged(kiq_process: Any, event: str, jid: str | None = None) -> list[dict[str, Any]]:
    """The worker's JSON lines of ``event`` (about job ``jid``, if given)."""
    lines = [json.loads(line) for line in kiq_process.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == event and (jid is None or line.get("jid") == jid)]


@pytest.mark.slow
def test_a_real_worker_traces_runs_failures_and_retries_and_logs_the_span(start_kiq, client, r, traced):
    traced.instrument()
    kiq_process = start_kiq(require=["otel_jobs", "otel_export"], tracing={"propagation_style": "child"})
    with traced.tracer.start_as_current_span("request"):
        jids = {name: client.enqueue(name, args).jid
                for name, args in (("TracedJob", ["t"]), ("FailsOnceJob", []), ("FailsForGoodJob", []))}
    sends = {jid_of(span): span for span in traced.spans(SpanKind.PRODUCER)}
    runs = worker_spans(r, 4)  # FailsOnceJob's retry comes within the scheduler's 5 s
    by_jid: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_jid.setdefault(run["attributes"]["messaging.message.id"], []).append(run)

    [ran] = by_jid[jids["TracedJob"]]
    send = ids(sends[jids["TracedJob"]])
    assert (ran["trace_id"], ran["parent_id"]) == send and ran["name"] == "process default"
    assert ran["attributes"]["messaging.sidekiq.job_class"] == "TracedJob"
    assert ran["status"] == ["UNSET", None]

    first, retry = by_jid[jids["FailsOnceJob"]]
    send = ids(sends[jids["FailsOnceJob"]])
    assert first["trace_id"] == send[0] and first["status"] == ["ERROR", "ValueError: first run fails"]
    assert [event["name"] for event in first["events"]] == ["exception"]
    assert retry["trace_id"] != send[0] and retry["links"] == [list(send)] and retry["parent_id"] is None
    assert retry["attributes"]["messaging.sidekiq.retry_count"] == 0 and retry["status"][0] == "UNSET"

    [died] = by_jid[jids["FailsForGoodJob"]]
    assert died["status"] == ["ERROR", "RuntimeError: doomed"]
    assert died["attributes"]["error.type"] == "RuntimeError"

    for event in ("inside", "done"):
        [line] = logged(kiq_process, event, jids["TracedJob"])
        assert (line["trace_id"], line["span_id"]) == (ran["trace_id"], ran["span_id"])
    [fail] = logged(kiq_process, "fail", jids["FailsOnceJob"])
    assert (fail["trace_id"], fail["span_id"]) == (first["trace_id"], first["span_id"])
    assert all("trace_id" not in line for line in logged(kiq_process, "worker started"))


@pytest.mark.slow
def test_a_worker_imports_opentelemetry_only_with_tracing_and_links_runs_by_default(start_kiq, client, r,
                                                                                    traced):
    plain = start_kiq(require=["otel_jobs"])
    client.enqueue("ModulesJob")
    assert json.loads(wait_for(lambda: r.lpop("otel:modules"))) == redis_py_imports(client.redis_url)
    plain.signal(signal.SIGTERM)  # a stop: a SIGKILLed worker's blocked moves could take the next job
    assert plain.wait() == 0

    traced.instrument()
    start_kiq(require=["otel_jobs", "otel_export"], tracing={"span_naming": "job_class"})
    client.enqueue("ModulesJob")
    assert "kiq.otel" in json.loads(wait_for(lambda: r.lpop("otel:modules"), timeout=20))
    jid = client.enqueue("TracedJob", ["t"]).jid
    [send] = [span for span in traced.spans(SpanKind.PRODUCER) if jid_of(span) == jid]
    [run] = [span for span in worker_spans(r, 2) if span["attributes"]["messaging.message.id"] == jid]
    assert run["name"] == "process TracedJob" and run["parent_id"] is None
    assert run["trace_id"] != ids(send)[0] and run["links"] == [list(ids(send))]


@pytest.mark.slow
def test_a_stopping_worker_exports_the_spans_its_sdk_still_holds(start_kiq, client, r, monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no export but the flush at the stop
    kiq_process = start_kiq(require=["otel_jobs", "otel_export"], tracing=True)
    jid = client.enqueue("TracedJob", ["t"]).jid
    wait_for(lambda: logged(kiq_process, "done", jid))
    assert r.llen(SPANS) == 0
    kiq_process.signal(signal.SIGTERM)
    assert kiq_process.wait() == 0
    [run] = worker_spans(r, 1)
    assert run["attributes"]["messaging.message.id"] == jid


@pytest.mark.slow
def test_a_worker_whose_tracer_raises_runs_and_counts_each_job_once(start_kiq, client, r, monkeypatch):
    """A span processor that raises at each span's end: every job succeeds once, none goes to
    dead, the metrics count each once, and the failure is logged once."""
    monkeypatch.setenv("OTEL_TEST_RAISE", "on_end")
    port = free_port()
    kiq_process = start_kiq(require=["otel_jobs", "otel_export"], tracing=True,
                            metrics={"host": "127.0.0.1", "port": port})
    jids = [client.enqueue("TracedJob", [str(n)]).jid for n in range(5)]
    wait_for(lambda: all(logged(kiq_process, "done", jid) for jid in jids))
    counted = 'kiq_jobs_processed_total{class="TracedJob",queue="default"} '
    text = wait_for(lambda: (t := scrape_metrics(port)) and counted in t and t)  # flushed each second
    assert f"{counted}5.0" in text  # a second count of a job is written with its first
    assert r.zcard("dead") == 0 and r.zcard("retry") == 0
    assert kiq_process.log().count("the tracer raised") == 1


def scrape_metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


# -- with Ruby Sidekiq ----------------------------------------------------


@pytest.fixture
def ruby(redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Ruby with Sidekiq 6.4 loaded (the interop tests' evaluator)."""
    from interop.conftest import RubyRepl

    repl = RubyRepl(redis_server.url, tmp_path / "ruby-repl.log")
    yield repl
    repl.close()


RUBY_PUSH = f"""
class Traceparent  # a client middleware, where Ruby's OpenTelemetry instrumentation injects
  def call(worker_class, job, queue, redis_pool)
    job["traceparent"] = "00-{RUBY_TRACE}-{RUBY_SPAN}-01"
    job["tracestate"] = "rails=request"
    yield
  end
end
Sidekiq.configure_client {{ |config| config.client_middleware {{ |chain| chain.add Traceparent }} }}
Sidekiq::Client.push("class" => "EchoJob", "queue" => "default", "args" => ["traced"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("style", ["link", "child"])
def test_a_job_pushed_by_ruby_sidekiq_with_a_traceparent_continues_its_trace(start_kiq, r, ruby, style):
    start_kiq(require=["interop.jobs", "otel_export"], tracing={"propagation_style": style})
    jid = ruby(RUBY_PUSH)
    [run] = worker_spans(r, 1)
    assert run["attributes"]["messaging.message.id"] == jid
    assert run["attributes"]["messaging.sidekiq.job_class"] == "EchoJob"
    if style == "child":
        assert (run["trace_id"], run["parent_id"]) == (RUBY_TRACE, RUBY_SPAN)
        assert run["trace_state"] == "rails=request"
    else:
        assert run["trace_id"] != RUBY_TRACE and run["links"] == [[RUBY_TRACE, RUBY_SPAN]]


@pytest.mark.slow
def test_ruby_sidekiq_reads_the_trace_context_kiq_writes(client, ruby, traced):
    traced.instrument()
    jid = client.enqueue("EchoJob", ["traced"], queue="ruby").jid
    [send] = traced.spans(SpanKind.PRODUCER)
    trace_id, span_id = ids(send)
    # the job hash Sidekiq's processor hands its server middleware, where Ruby's instrumentation extracts
    item = ruby('Sidekiq::Queue.new("ruby").first.item')
    assert item["jid"] == jid and carried(item) == (trace_id, span_id)

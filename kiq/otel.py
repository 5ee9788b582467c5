"""OpenTelemetry tracing, in the usual instrumentor shape: ``KiqInstrumentor().instrument()``.

A PRODUCER span for each job pushed (one at a time, in bulk or scheduled) and a CONSUMER span
around each job's run, with the attributes of OpenTelemetry's messaging conventions. The trace
context travels in the job hash as top-level ``traceparent`` and ``tracestate`` keys (through
the global propagator), where Ruby's opentelemetry-instrumentation-sidekiq writes and reads
them, so an enqueue in Rails and its run in kiq, or the other way round, are one trace.

Both spans come from one member of kiq's own middleware (``Tracing``): it wraps each push
(``around_push``), and it stands in the server chain after the log fields, where ``call()``
returns the job's outcome: a job that failed into the retry or dead set, or was dropped, is an
error span with the exception recorded (``Outcome.error``). While a job runs its span is
current, so the app's own spans are its children, and kiq's log lines carry ``trace_id`` and
``span_id`` (kiq.log).

``propagation_style``, as in Ruby's: ``link`` (the default) starts a new trace for each run,
linked to the enqueuing span; ``child`` makes a job's first run a child of it. A retry always
starts a new trace, linked to the enqueuing span, so that days of retries do not pile into
the request's trace.

Only ``opentelemetry-api`` is needed (``pip install 'kiq[otel]'``); the app sets up the SDK
and its exporter. Nothing imports this module unless tracing is asked for (``tracing: true``
in the config, or the app instrumenting), so it costs nothing otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
except ImportError as missing:
    raise ImportError(f"kiq.otel needs the OpenTelemetry API: pip install 'kiq[otel]' ({missing})") from None

from kiq import __version__, log, middleware
from kiq.config import PROPAGATION_STYLES, SPAN_NAMINGS
from kiq.payload import job_name
from kiq.processor import describe, error_name
from kiq.retry import Outcome

if TYPE_CHECKING:
    from kiq.job import Job

SYSTEM = "sidekiq"  # the protocol, as Ruby's instrumentation names it: one query finds both sides' spans
FLUSH_MILLIS = 2000  # what a stopping worker gives the SDK to export its last spans

logger = log.get("kiq.otel")
T = TypeVar("T")


class _PayloadGetter(Getter[Mapping[str, Any]]):
    """Reads the trace context from a job hash: only string values, whatever a payload holds."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


_GETTER = _PayloadGetter()
_ROOT = context.Context()  # no parent: a span started in it begins a trace


class Tracing(middleware.Middleware):
    """kiq's member that traces: PRODUCER spans around pushes, CONSUMER spans around runs."""

    def __init__(self, tracer: trace.Tracer, span_naming: str, propagation_style: str) -> None:
        self.tracer = tracer
        self.by_class = span_naming == "job_class"
        self.child = propagation_style == "child"

    def around_push(self, payloads: Sequence[dict[str, Any]], call: Callable[[], None]) -> None:
        """One span per job, current context as parent, injected into the job before the push."""
        spans = [span for payload in payloads if (span := _guarded(self._send, payload)) is not None]
        try:
            call()
        except BaseException as error:
            for span in spans:
                _guarded(_record, span, error)
            raise
        finally:
            for span in spans:
                _guarded(span.end)

    def _send(self, payload: dict[str, Any]) -> Span:
        name = job_name(payload)
        queue = str(payload.get("queue") or "default")  # a scheduled entry may come without one
        span = self.tracer.start_span(
            f"send {name if self.by_class else queue}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes("send", queue, payload["jid"], name, payload),
        )
        propagate.inject(payload, context=trace.set_span_in_context(span))
        return span

    def around_perform(self, job: Job, call: Callable[[], Any]) -> Any:
        """The job's span, current while it runs; its outcome decides the status."""
        started = _guarded(self._process, job)
        if started is None:
            return call()
        span, token = started
        try:
            outcome: Outcome = call()
            if outcome.failed and outcome.error is not None:  # retried, dead, dropped or discarded
                _guarded(_record, span, outcome.error)
            return outcome
        except BaseException as error:  # kiq itself failed on the job
            _guarded(_record, span, error)
            raise
        finally:
            context.detach(token)
            _guarded(span.end)

    def _process(self, job: Job) -> tuple[Span, Token[context.Context]]:
        """The job's span, started and made current, and the token that ends its being current."""
        payload = job.payload
        parent = propagate.extract(payload, getter=_GETTER)
        name = job.job_name if self.by_class else job.queue_name
        attributes = _attributes("process", job.queue_name, job.jid, job.job_name, payload)
        if self.child and type(payload.get("retry_count")) is not int:  # a first run joins its trace
            span = self.tracer.start_span(f"process {name}", parent, SpanKind.CONSUMER, attributes)
        else:
            enqueued = trace.get_current_span(parent).get_span_context()
            links = [Link(enqueued)] if enqueued.is_valid else None
            span = self.tracer.start_span(f"process {name}", _ROOT, SpanKind.CONSUMER, attributes, links)
        return span, context.attach(trace.set_span_in_context(span, parent))  # the payload's baggage too


_said = threading.Event()  # a tracer failure was logged: once per process, not once per job


def _guarded(call: Callable[..., T], *args: Any) -> T | None:
    """``call(*args)``, or None if it raised: the app's tracer setup (a span processor, a
    propagator) failing must not fail the job or its enqueue, which then go on untraced."""
    try:
        return call(*args)
    except Exception:
        if not _said.is_set():
            _said.set()
            logger.exception("the tracer raised; jobs and enqueues go on without its spans (said once)")
        return None


def _attributes(operation: str, queue: str, jid: Any, job_class: str,
                payload: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": str(jid),
        "messaging.sidekiq.job_class": job_class,
    }
    count = payload.get("retry_count")
    if type(count) is int:
        attributes["messaging.sidekiq.retry_count"] = count
    return attributes


def _record(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", error_name(error))
    span.set_status(Status(StatusCode.ERROR, describe(error)))


def _current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex, as log fields (kiq.log)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


class KiqInstrumentor:
    """Turns kiq's tracing on and off, in OpenTelemetry's instrumentor shape (one instance).

    ``instrument(tracer_provider=None, span_naming="queue", propagation_style="link")``: the
    provider defaults to the global one (set by the app, or by ``opentelemetry-instrument``),
    looked up when spans start, so the app may set it after this call.
    """

    _instance: KiqInstrumentor | None = None
    _lock = threading.Lock()
    _member: Tracing | None
    _provider: trace.TracerProvider | None

    def __new__(cls) -> KiqInstrumentor:
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._member = None
                instance._provider = None
                cls._instance = instance
            return cls._instance

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return self._member is not None

    def instrument(self, *, tracer_provider: trace.TracerProvider | None = None, span_naming: str = "queue",
                   propagation_style: str = "link") -> None:
        """Add the tracing member to kiq's middleware; a second call changes nothing."""
        _check("span_naming", span_naming, SPAN_NAMINGS)
        _check("propagation_style", propagation_style, PROPAGATION_STYLES)
        with self._lock:
            if self._member is not None:
                logger.warning("kiq is instrumented already; these options change nothing",
                               span_naming=span_naming, propagation_style=propagation_style)
                return
            tracer = trace.get_tracer("kiq.otel", __version__, tracer_provider)
            self._member = Tracing(tracer, span_naming, propagation_style)
            self._provider = tracer_provider
            middleware.add_builtin(self._member)
            log.trace_ids(_current_ids)

    def uninstrument(self) -> None:
        """Take the tracing member out; nothing to do if it is not in."""
        with self._lock:
            if self._member is None:
                return
            middleware.remove(self._member)
            log.trace_ids(None)
            self._member = None

    def flush(self, timeout_millis: int = FLUSH_MILLIS) -> None:
        """Export the spans the SDK still holds (a worker, which ends without ``atexit``, before
        it exits); an API without an SDK has nothing to flush."""
        provider = self._provider or trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush(timeout_millis)


def _check(option: str, value: str, allowed: Iterable[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(allowed)}, not {value!r}")

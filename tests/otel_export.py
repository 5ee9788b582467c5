"""A test-only OpenTelemetry setup for real kiq workers, which require it in their config: the
SDK becomes the global tracer provider, and each finished span is written as JSON to the Redis
list ``otel:spans``, where tests/test_otel.py reads them.

Spans go through a BatchSpanProcessor, as in production, flushed every 50 ms unless
``OTEL_BSP_SCHEDULE_DELAY`` says otherwise (a test sets it high to see a stopping worker
flush). The SDK renews the processor's thread in each forked worker.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from otel_faults import RaisingProcessor

SPANS = "otel:spans"


def record(span: ReadableSpan) -> dict[str, Any]:
    """What the tests read of a span, ids in hex."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "trace_state": context.trace_state.to_header(),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "links": [[format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")]
                  for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": [span.status.status_code.name, span.status.description],
        "events": [{"name": event.name, "attributes": dict(event.attributes or {})} for event in span.events],
    }


class RedisExporter(SpanExporter):
    """Its own connection, made in the process that exports (a worker, after the fork): it
    imports no jobs module, so it goes with any of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: tuple[int, redis.Redis] | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock:
            if self.conn is None or self.conn[0] != os.getpid():
                self.conn = (os.getpid(), redis.Redis.from_url(os.environ["KIQ_REDIS_URL"]))
            self.conn[1].rpush(SPANS, *(json.dumps(record(span)) for span in spans))
        return SpanExportResult.SUCCESS


provider = TracerProvider()
delay = int(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "50"))
provider.add_span_processor(BatchSpanProcessor(RedisExporter(), schedule_delay_millis=delay))
if os.environ.get("OTEL_TEST_RAISE"):  # where a test wants the app's tracer setup to fail
    provider.add_span_processor(RaisingProcessor(os.environ["OTEL_TEST_RAISE"]))
trace.set_tracer_provider(provider)

"""A span processor with a bug, for tests of tracing that must not fail jobs (tests/test_otel.py
in-process, tests/otel_export.py in workers). Importing it sets no tracer provider."""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor


class RaisingProcessor(SpanProcessor):
    """Raises where ``where`` says: "on_start" or "on_end"."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.where == "on_start":
            raise RuntimeError("a span processor's bug in on_start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.where == "on_end":
            raise RuntimeError("a span processor's bug in on_end")

"""A worker's per-job path in one process, without Redis: ``Worker._handle_unit`` on no-op payloads.

It runs what a processor thread does with each job it takes (decode, the server chain with
kiq's own members, perform, the outcome, the count), with a fetcher that only drops the
acknowledgement. Lines go to /dev/null; the figure is microseconds per job, the best of 5
rounds. To compare revisions, unpack each one and run this script against each, side by side::

    git archive main kiq | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before .venv/bin/python bench/perjob.py warning
    .venv/bin/python bench/perjob.py warning

The level (``info`` by default, as in production) decides whether the ``done`` line is
written; ``warning`` leaves kiq's own work. PERJOB_N sets the number of payloads (50,000).
PERJOB_TRACING=1 turns tracing on (kiq.otel, with the OpenTelemetry SDK batching the spans
to an exporter that drops them): the cost of a span per job, its log fields included.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import kiq
from kiq import log, metrics, middleware, worker
from kiq.client import build_payload
from kiq.retry import Outcome
from kiq.roundtrip import Unit


class NoopJob(kiq.Job):
    def perform(self, number: int) -> None:
        pass


class DroppingFetcher:
    def done(self, unit: Unit, outcome: Outcome, seconds: float = 0.0) -> None:
        """Acknowledged nowhere: Redis is not what this measures."""


class Settings:
    max_jobs = 0


def processor() -> Any:
    """A worker with what ``_handle_unit`` reads, and kiq's members added as ``Worker.run`` adds them."""
    host = worker.Worker.__new__(worker.Worker)
    host.lock = threading.Lock()
    host.running = {}
    host.fetcher = DroppingFetcher()  # type: ignore[assignment]
    host.config = Settings()  # type: ignore[assignment]
    host.jobs_done = 0
    host.asked = set()
    host.log = log.get("kiq.worker")
    if hasattr(worker, "JobMetrics"):  # revisions before kiq's members of the server chain have none
        middleware.add_builtin(worker.JobMetrics(host._ending))
    return host


def trace() -> None:
    """Tracing on, as a worker turns it on at boot, with spans exported nowhere."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from kiq.otel import KiqInstrumentor

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    KiqInstrumentor().instrument(tracer_provider=provider)


def main() -> None:
    level = sys.argv[1] if len(sys.argv) > 1 else "info"
    count = int(os.environ.get("PERJOB_N", "50000"))
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    log.setup(level, "json")
    tracing = os.environ.get("PERJOB_TRACING") == "1"
    if tracing:
        trace()
    host = processor()
    units = [Unit("default", json.dumps(build_payload("NoopJob", [n]))) for n in range(count)]
    rounds = []
    for _ in range(5):
        handle = host._handle_unit
        started = time.perf_counter()
        for unit in units:
            handle("processor-0", unit)
        rounds.append((time.perf_counter() - started) / count * 1e6)
        metrics.flush()
    label = f"{level}, tracing" if tracing else level
    print(f"{label}: best {min(rounds):.2f} us/job (rounds: {' '.join(f'{r:.2f}' for r in rounds)})")


if __name__ == "__main__":
    main()

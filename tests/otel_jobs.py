"""Jobs that tests/test_otel.py runs in real workers. This module never imports OpenTelemetry:
a worker that requires only it shows what kiq imports by itself."""

from __future__ import annotations

import json
import sys

import structlog
from sample_jobs import conn

import kiq
from kiq.callbacks import retry_on


def otel_modules() -> list[str]:
    """kiq.otel, if imported, and OpenTelemetry's imported modules (redis-py 8 imports some by
    itself where the SDK is installed)."""
    return sorted(name for name in sys.modules if name == "kiq.otel" or name.split(".")[0] == "opentelemetry")


class ModulesJob(kiq.Job):
    """Records ``otel_modules()`` in its worker."""

    def perform(self) -> None:
        conn().rpush("otel:modules", json.dumps(otel_modules()))


class TracedJob(kiq.Job):
    """Logs a line of its own while it runs."""

    def perform(self, token: str) -> None:
        structlog.get_logger("app").info("inside", token=token)


@retry_on(ValueError, wait=0, attempts=2)
class FailsOnceJob(kiq.Job):
    """Fails its first run, into the retry set; its retry succeeds."""

    def perform(self) -> None:
        if self.executions == 1:
            raise ValueError("first run fails")


class FailsForGoodJob(kiq.Job):
    """Fails with no retries: straight into the dead set."""

    retry = 0

    def perform(self) -> None:
        raise RuntimeError("doomed")

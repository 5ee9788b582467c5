"""The jobs of ``bench/sizing.py``: bodies that touch no Redis, so every command counted is kiq's.

The workers import this module (``kiq start -r bench.sizing_jobs``), and so does the harness,
which enqueues them.
"""

from __future__ import annotations

import time

import kiq
from kiq.callbacks import retry_on


class SizingNoop(kiq.Job):
    def perform(self) -> None:
        """Nothing at all: the Redis commands of a run are kiq's alone."""


class FirstRunFails(Exception):
    """What a ``SizingFlaky`` job raises on its first run."""


@retry_on(FirstRunFails, wait=0, attempts=2, jitter=0)
class SizingFlaky(kiq.Job):
    def perform(self) -> None:
        """Fail the first run, succeed the second: each job goes once through the retry set,
        due at once (``retry_on`` with no wait), where the master's scheduler finds it."""
        if not self.payload.get("exception_executions"):
            raise FirstRunFails("the first run fails on purpose")


class SizingSleep(kiq.Job):
    def perform(self, seconds: float) -> None:
        """Sleep, touching no Redis: a job long enough that its worker prefetches nothing, so
        each finished job is acknowledged in a round trip of its own or a few."""
        time.sleep(seconds)

"""The demo's jobs: what a real app's jobs module looks like."""

from __future__ import annotations

import random
import time
from datetime import datetime

import kiq


class ResizeImageJob(kiq.Job):
    queue = "default"

    def perform(self, image_id: int, size: str = "medium") -> None:
        time.sleep(random.uniform(0.01, 0.2))


class SendReceiptJob(kiq.Job):
    queue = "critical"

    def perform(self, order_id: int, sent_at: datetime) -> None:
        time.sleep(0.01)


class FlakyJob(kiq.Job):
    """Fails now and then, to show retries."""

    queue = "low"
    retry = 3

    def perform(self, n: int) -> None:
        if random.random() < 0.3:
            raise ConnectionError(f"upstream timed out for {n}")


class BuildReportJob(kiq.Job):
    """Takes a few seconds, to show running jobs (``make screenshots``)."""

    queue = "reports"

    def perform(self, report: str, month: str) -> None:
        time.sleep(random.uniform(4, 12))


class ImportFeedJob(kiq.Job):
    """Always fails and is not retried, to show the dead set (``make screenshots``)."""

    queue = "low"
    retry = 0

    def perform(self, url: str) -> None:
        raise ValueError(f"not a feed: {url} answered with HTML")

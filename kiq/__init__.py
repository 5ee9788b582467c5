"""kiq: background jobs for Python in Sidekiq's Redis format, with an Active Job-style API."""

from __future__ import annotations

__version__ = "0.1.0"

from kiq import adapters, globalid, middleware
from kiq.adapters import configure
from kiq.client import Client, Enqueued
from kiq.job import Job, JobNameError
from kiq.periodic import periodic
from kiq.serialize import DeserializationError, SerializationError

__all__ = [
    "Client",
    "DeserializationError",
    "Enqueued",
    "Job",
    "JobNameError",
    "SerializationError",
    "adapters",
    "configure",
    "globalid",
    "middleware",
    "periodic",
]

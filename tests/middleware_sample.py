"""A middleware that carries a tenant from the enqueuing process to the job, as an app would;
the process-level test imports it on both sides (the workers through ``require``)."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from typing import Any

import structlog
from sample_jobs import conn

import kiq

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")


class Tenant(kiq.middleware.Middleware):
    def before_enqueue(self, payload: dict[str, Any]) -> None:
        payload["tenant"] = tenant.get()

    def around_perform(self, job: kiq.Job, call: Callable[[], Any]) -> Any:
        token = tenant.set(str(job.payload.get("tenant", "")))
        structlog.get_logger("tenant").info("tenant set", tenant=tenant.get())
        try:
            return call()
        finally:
            tenant.reset(token)


class TenantJob(kiq.Job):
    def perform(self, token: str) -> None:
        conn().rpush("tenants", f"{token}:{tenant.get()}:{os.getpid()}")
        conn().rpush("chain", " ".join(type(member).__name__ for member in kiq.middleware.builtins()))


TENANT = Tenant()
kiq.middleware.add(TENANT)

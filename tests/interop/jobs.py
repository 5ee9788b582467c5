"""Python jobs for the interop tests, required by their ``kiq start`` (``interop.jobs``).

Each job records what it saw in Redis lists named ``py:*``. ``EchoJob`` and ``AccountJob``
share their names with the Ruby classes in ruby/app.rb. ``Account`` is the Python side of
ruby/app.rb's ``Account``: records live in the Redis hash ``interop:accounts``, and a
kiq.globalid locator finds them, so a global ID from either side names the same record.

The test process never imports this module (tests/sample_jobs.py has an ``EchoJob`` too):
tests run Python snippets that import it in a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

import kiq
from kiq import globalid
from kiq.connection import connect
from kiq.serialize import serialize_args, serialize_kwargs

APP = "kiq-interop"  # ruby/app.rb's GlobalID.app

_conn: tuple[int, redis.Redis] | None = None


def conn() -> redis.Redis:
    """One connection per process, made after the fork."""
    global _conn
    if _conn is None or _conn[0] != os.getpid():
        _conn = (os.getpid(), connect(os.environ["KIQ_REDIS_URL"], retry=True))
    return _conn[1]


def record(key: str, value: Any) -> None:
    conn().rpush(key, json.dumps(value))


class EchoJob(kiq.Job):
    """Records its arguments, tagged as kiq writes them, so a test compares them exactly."""

    def perform(self, *args: Any, **kwargs: Any) -> None:
        record("py:echo", {"jid": self.jid, "args": serialize_args(args), "kwargs": serialize_kwargs(kwargs),
                           "ran_at": time.time()})


class GateJob(kiq.Job):
    """Runs until the test pushes to ``py:release:TOKEN`` (or 60 s pass)."""

    def perform(self, token: str) -> None:
        record("py:started", {"token": token, "jid": self.jid, "pid": os.getpid()})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not conn().blpop([f"py:release:{token}"], timeout=1):
            pass


class FlakyJob(kiq.Job):
    """Fails while its token is in the set ``py:failing``."""

    retry = 5

    def perform(self, token: str) -> None:
        record("py:attempts", {"token": token, "pid": os.getpid()})
        if conn().sismember("py:failing", token):
            raise ValueError(f"boom {token}")
        record("py:done", token)


class DoomedJob(kiq.Job):
    """Goes straight to the dead set."""

    retry = 0

    def perform(self, token: str) -> None:
        record("py:attempts", {"token": token, "pid": os.getpid()})
        raise RuntimeError(f"doomed {token}")


class PidJob(kiq.Job):
    """Records which worker process ran it."""

    def perform(self, token: str) -> None:
        record("py:done", {"token": token, "pid": os.getpid()})


@dataclass(frozen=True)
class Account:
    id: str
    name: str

    @classmethod
    def find(cls, account_id: str) -> Account:
        name = conn().hget("interop:accounts", account_id)
        if name is None:
            raise globalid.RecordNotFoundError(f"no Account with id {account_id}")
        return cls(account_id, str(name))


class AccountLocator:
    """kiq.globalid's locator for ``Account``: ``gid://kiq-interop/Account/ID``."""

    def identify(self, obj: object) -> tuple[str, object] | None:
        return ("Account", obj.id) if isinstance(obj, Account) else None

    def locate(self, model_name: str, model_id: str) -> object:
        if model_name != "Account":
            raise globalid.UnknownModelError(f"no model {model_name!r} here")
        return Account.find(model_id)


globalid.configure(app=APP)
globalid.register(AccountLocator())


class AccountJob(kiq.Job):
    """Ruby's AccountJob, an Active Job: kiq enqueues it in Rails' Sidekiq-adapter shape."""

    active_job = True
    queue = "ruby"

    def perform(self, account: Account, note: str, **options: Any) -> None:
        record("py:accounts", {
            "jid": self.jid,
            "wrapper": self.payload.get("class"),
            "job_id": self.payload["args"][0].get("job_id"),
            "account": {"class": type(account).__name__, "id": account.id, "name": account.name},
            "note": note,
            "options": serialize_kwargs(options),
        })

"""`make run`: make sure a Redis answers at the configured URL, enqueue demo jobs, run kiq."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import redis

import kiq
from kiq.config import load
from kiq.connection import DEFAULT_URL, redact

CONFIG = "config/kiq.yml"


def where(url: str) -> str:
    """Where the URL came from, as config.load chose it."""
    for name in ("KIQ_REDIS_URL", "REDIS_URL"):
        if os.environ.get(name) == url:
            return name
    return "the default" if url == DEFAULT_URL else CONFIG


def ensure_redis(url: str) -> None:
    """Start a redis-server on the URL's port when nothing answers there."""
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
        return
    except redis.AuthenticationError as error:
        sys.exit(f"demo: Redis at {redact(url)} refused the login ({error}); check KIQ_REDIS_URL")
    except redis.ConnectionError:
        pass
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        sys.exit(f"demo: no Redis answers at {redact(url)}; start one or set KIQ_REDIS_URL")
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("demo: redis-server is not installed (run `make system-deps`)")
    port = str(parts.port or 6379)
    print(f"demo: starting redis-server on 127.0.0.1:{port}; it stays up after kiq stops, for `kiq stats`, "
          f"`kiq web` and the like (stop it with `redis-cli -p {port} shutdown nosave`)", file=sys.stderr)
    subprocess.run([binary, "--port", port, "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--save", "", "--appendonly", "no"], check=True)
    for _ in range(50):
        try:
            redis.Redis.from_url(url, socket_timeout=2).ping()
            return
        except redis.ConnectionError:
            time.sleep(0.1)
    sys.exit("demo: redis-server did not start")


def enqueue_demo_jobs() -> None:
    from demo.jobs import FlakyJob, ResizeImageJob, SendReceiptJob

    ResizeImageJob.perform_bulk([[n] for n in range(50)])
    for order in range(10):
        SendReceiptJob.perform_later(order, sent_at=datetime.now(timezone.utc))
    ResizeImageJob.set(wait=timedelta(seconds=5)).perform_later(99, size="large")
    for n in range(5):
        FlakyJob.perform_later(n)
    print("demo: enqueued 66 jobs (one due in 5 s); Ctrl-C stops kiq", file=sys.stderr)


def main() -> None:
    config = load(CONFIG)
    namespace = f", namespace {config.namespace!r}" if config.namespace else ""
    print(f"demo: writing demo jobs to Redis at {redact(config.redis_url)}{namespace} "
          f"(from {where(config.redis_url)}; set KIQ_REDIS_URL to choose another)", file=sys.stderr)
    ensure_redis(config.redis_url)
    kiq.configure(config.redis_url, config.namespace)
    enqueue_demo_jobs()
    os.execv(sys.executable, [sys.executable, "-m", "kiq", "start", "-c", CONFIG])


if __name__ == "__main__":
    main()

"""Building Redis clients from a URL, the same way for the client, the master and workers.

Every connection has a socket timeout: without one a connection dropped by the
network hangs a thread forever. Blocking commands must use a shorter block time
than ``BLOCKING_SOCKET_TIMEOUT``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SOCKET_TIMEOUT = 5.0
BLOCKING_SOCKET_TIMEOUT = 10.0


def url_from_env() -> str:
    """``KIQ_REDIS_URL``, else ``REDIS_URL``, else the local default."""
    return os.environ.get("KIQ_REDIS_URL") or os.environ.get("REDIS_URL") or DEFAULT_URL


def connect(url: str, *, blocking: bool = False, name: str = "kiq") -> redis.Redis:
    """A client with kiq's timeouts; ``blocking`` clients serve BLMOVE and friends.

    Payloads that are not UTF-8 decode with surrogate escapes so that they can
    be reported and removed again byte for byte instead of crashing a reader.
    """
    timeout = BLOCKING_SOCKET_TIMEOUT if blocking else SOCKET_TIMEOUT
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        encoding_errors="surrogateescape",
        socket_timeout=timeout,
        socket_connect_timeout=SOCKET_TIMEOUT,
        socket_keepalive=True,
        client_name=name,
    )


def wire(text: str) -> bytes:
    """A string read from Redis, as the exact bytes to send back (hiredis cannot encode surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def redact(url: str) -> str:
    """The URL with any password replaced, for logs, titles and metrics."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def server_version(conn: redis.Redis) -> tuple[int, ...]:
    info = conn.info("server")
    return tuple(int(part) for part in str(info["redis_version"]).split(".")[:3])

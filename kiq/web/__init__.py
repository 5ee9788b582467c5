"""kiq's web dashboard: ``kiq.web.app(...)`` is a WSGI application over kiq's Redis data.

It needs the ``web`` extra (``pip install 'kiq[web]'``): Werkzeug and Jinja2 are imported
only when an application is made, so ``import kiq.web`` (and the ``kiq web`` command's help)
works without them. docs/web.md tells how to run it, mount it and protect it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from kiq.periodic import Entry
    from kiq.shards import Shards
    from kiq.web.application import Dashboard

__all__ = ["app"]


def app(
    redis_url: str | None = None,
    namespace: str | None = None,
    *,
    read_only: bool = False,
    periodic: Iterable[Entry] = (),
    secret: bytes | None = None,
    connection: redis.Redis | None = None,
    shards: Shards | Mapping[str, Any] | None = None,
) -> Dashboard:
    """The dashboard as a WSGI application, mountable under any prefix (it honours SCRIPT_NAME).

    Redis is found as the client finds it when ``redis_url``/``namespace`` are None.
    ``read_only`` refuses every change (POST) and hides the buttons. ``periodic`` lists the
    entries the Periodic page shows (``kiq web`` passes the config's and the app's).
    ``secret`` signs the CSRF tokens: give the same one to every process serving the dashboard
    behind one address; by default each application makes its own.

    ``shards`` (a ``kiq.shards.Shards``, or the config file's ``shards`` mapping, as the client
    takes them) shows every shard at once, with the shard as a column where it matters;
    ``redis_url`` and ``connection`` are then unused. One Redis shows no shard anywhere.
    """
    from kiq.api import ShardedAPI
    from kiq.web.application import Dashboard

    return Dashboard(ShardedAPI(shards, namespace, redis_url=redis_url, connection=connection),
                     read_only=read_only, periodic=periodic, secret=secret)

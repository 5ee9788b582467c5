"""Building Redis clients from a URL, the same way for the client, the master and workers.

Every connection has a socket timeout: without one a connection dropped by the
network hangs a thread forever. Blocking commands must use a shorter block time
than ``BLOCKING_SOCKET_TIMEOUT``.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from hiredis import pack_command
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
    OutOfMemoryError,
    RedisClusterException,
)
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from kiq import log

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SOCKET_TIMEOUT = 5.0
BLOCKING_SOCKET_TIMEOUT = 10.0
SENTINEL_SCHEMES = ("sentinel://", "redis+sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
RETRY_PAUSE_MAX = 5.0
HINT_REPEAT = 60.0  # seconds within which the same refusal, back again, is not said again
ENCODE_PASSWORD = "a password in the Redis URL must percent-encode / ? # as %2F %3F %23"
LOGIN_REFUSED = (AuthenticationError, AuthorizationError, AuthenticationWrongNumberOfArgsError)
ACCESS_CHECK = "return redis.call('DEL', KEYS[1])"
logger = log.get("kiq.redis")
IDLE_CHECK = 1.0  # seconds: a kept connection idle longer is checked as the pool checks one
T = TypeVar("T")


class RedisRefused(RuntimeError):
    """Redis answered, but refused kiq's login or one of its commands: waiting does not fix that."""


class ClusterUnavailable(redis.ConnectionError):
    """The cluster client found no node for a slot, or none to learn the cluster's layout from
    (redis-py's RedisClusterException, which is no RedisError): an outage like any other to
    kiq's loops, which wait and try again."""


# redis-py before 6 requires a command name to get a connection, and later ones deprecate it.
_POOL_ARGS = () if inspect.signature(redis.ConnectionPool.get_connection).parameters[
    "command_name"].default is None else ("PIPELINE",)


def send(client: redis.Redis, commands: Sequence[tuple[Any, ...]], again: bool = False,
         best_effort: Collection[int] = ()) -> list[Any]:
    """Several commands in one round trip, their raw replies in order, as a non-transactional
    pipeline sends them, for a fraction of its CPU: most of a push's cost on the client was the
    pipeline's machinery and redis-py's argument encoding (bench/notes.md). An error reply is
    raised once every reply is read, so the connection stays usable; one left in the middle of
    its replies by anything else is dropped, not reused. ``again``: a connection kept from an
    earlier call that fails is replaced and the commands sent once more (an enqueueing
    client's, which may at worst push a job twice; never a script whose reply was lost).
    ``best_effort``: the positions of commands whose error reply is logged, not raised (a push's
    listing of its queue in ``queues``, whose key anything else may have made another type:
    raising would tell the caller that a job already pushed was not, and a retry would push it
    twice). A Redis Cluster client sends them as a cluster pipeline, which follows MOVED and
    ASK: the commands of one call share a slot (kiq.shards)."""
    if isinstance(client, Cluster):
        return client.send(commands, best_effort)
    kept = _kept(client.connection_pool)
    conn, reused = _checkout(client.connection_pool, kept)

    def exchange() -> list[Any]:
        if conn._sock is None:  # a connection's own connect(): a Sentinel's asks for the primary anew
            conn.connect()
        conn.send_packed_command([packed])
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as error:
                replies.append(error)
        return _checked(commands, replies, best_effort)

    try:
        packed = _pack(conn, commands)
        try:
            return exchange()
        except redis.ConnectionError:
            if not (again and reused):
                raise
            conn.disconnect()  # closed by Redis since its last call (a restart): the next connects
            return exchange()
    except redis.ResponseError:
        raise
    except BaseException:
        conn.disconnect()
        raise
    finally:
        kept.append((conn, time.monotonic()))


# Connections that ``send`` keeps out of each pool between its calls: a checkout from redis-py's
# pool costs a third of a push's CPU (four system calls: the process id twice, and a
# non-blocking read with two timeout changes to see that the connection has no data waiting).
# The pool still counts them in use, so its ``disconnect()`` closes them too (they reconnect
# on their next command); a forked child starts with none, as redis-py's pools do.
_KEPT: weakref.WeakKeyDictionary[Any, list[tuple[Any, float]]] = weakref.WeakKeyDictionary()
os.register_at_fork(after_in_child=_KEPT.clear)


def _kept(pool: Any) -> list[tuple[Any, float]]:
    kept = _KEPT.get(pool)
    if kept is None:
        kept = _KEPT.setdefault(pool, [])
    return kept


def _checkout(pool: Any, kept: list[tuple[Any, float]]) -> tuple[Any, bool]:
    """A connection for ``send``, and whether it was kept from an earlier call: the last one
    used (``list.pop`` is atomic, so threads never share one), else one from the pool. One idle
    for ``IDLE_CHECK`` gets the pool's check, so that a connection Redis closed meanwhile (a
    restart, its idle timeout) is made again instead of failing the call."""
    try:
        conn, used = kept.pop()
    except IndexError:
        return pool.get_connection(*_POOL_ARGS), False  # redis-py's Connection is untyped
    if time.monotonic() - used > IDLE_CHECK:
        try:
            if conn.can_read():
                conn.disconnect()  # data nobody asked for: never read it as a reply
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()  # closed by Redis: the next command reconnects
    return conn, True


def evalsha(client: redis.Redis, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run a registered script (``client.register_script``) through ``send``: for a call with
    hundreds of arguments, redis-py's own call spends more on encoding them than the script
    takes to run. A script Redis does not have (after a restart or SCRIPT FLUSH) is loaded
    and run again: NOSCRIPT means it did not run."""
    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        return send(client, [command])[0]
    except redis.exceptions.NoScriptError:
        if isinstance(client, Cluster):
            script.sha = client.script_load(script.script)  # on every primary
        else:  # through send too: a call through redis-py would take a second connection
            script.sha = send(client, [("SCRIPT", "LOAD", script.script)])[0]
        return send(client, [("EVALSHA", script.sha, *command[2:])])[0]


def _pack(conn: Any, commands: Sequence[tuple[Any, ...]]) -> bytes:
    """The commands in Redis's protocol, packed by hiredis; through the connection's own
    encoder where hiredis cannot: a surrogate-escaped byte (which the encoder restores) or an
    argument of another type (which the encoder refuses with redis-py's DataError)."""
    try:
        return b"".join(pack_command(command) for command in commands)
    except (UnicodeEncodeError, TypeError):
        return b"".join(conn.pack_commands(commands))


class _Packer:
    """Packs a command for redis-py's connections with hiredis, each argument encoded as
    redis-py's encoder does, text as kiq's clients decode it: UTF-8, a byte that is not UTF-8
    restored from its surrogate escape. redis-py before 8.2 hands text to hiredis as it is, and
    hiredis refuses a surrogate: there, naming again a key or payload read from Redis that is
    not UTF-8 (``kiq stats``, the dashboard, deleting it) failed. redis-py's cluster client
    takes no packer of its own: on a cluster such keys need redis-py 8.2 or later."""

    _encode: Callable[[Any], bytes] = Encoder("utf-8", "surrogateescape", True).encode  # type: ignore[no-untyped-call]

    def pack(self, *args: Any) -> list[bytes]:
        name, rest = args[0], args[1:]
        if isinstance(name, str):
            name = name.encode()
        args = (*name.split(), *rest) if b" " in name else (name, *rest)
        encode = self._encode
        encoded: Any = tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview)) else encode(arg)
                             for arg in args)
        return [pack_command(encoded)]


def url_from_env() -> str:
    """``KIQ_REDIS_URL``, else ``REDIS_URL``, else the local default."""
    return os.environ.get("KIQ_REDIS_URL") or os.environ.get("REDIS_URL") or DEFAULT_URL


def connect(url: str, *, blocking: bool = False, name: str = "kiq", retry: bool = False,
            timeout: float | None = None) -> redis.Redis:
    """A client with kiq's timeouts; ``blocking`` clients serve BLMOVE and friends; ``timeout``
    replaces both (a call that must not hold up a stop).

    Payloads that are not UTF-8 decode with surrogate escapes so that they can
    be reported and removed again byte for byte instead of crashing a reader.

    Without ``retry`` a failed command raises at once instead of being sent
    again by redis-py: a script whose reply was lost may have run, and only the
    caller knows how to make a second attempt safe. Enqueueing clients retry,
    since the worst a repeated push can do is enqueue a job twice.

    ``sentinel://[:password@]host:port[,host:port...]/service[/db]`` finds the
    primary through Redis Sentinel and follows failovers.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "encoding_errors": "surrogateescape",
        "socket_timeout": timeout or (BLOCKING_SOCKET_TIMEOUT if blocking else SOCKET_TIMEOUT),
        "socket_connect_timeout": timeout or SOCKET_TIMEOUT,
        "client_name": name,
        "command_packer": _Packer(),
    }
    if unencoded_password(url):
        raise ValueError(ENCODE_PASSWORD)
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True
    if not retry:
        options["retry"] = Retry(NoBackoff(), 0)
    if url.startswith(SENTINEL_SCHEMES):
        return _sentinel_primary(url, options)
    if is_cluster(url):
        return Cluster(url, options)  # type: ignore[return-value]  # the same commands as a Redis
    return redis.Redis.from_url(url, **options)


def url_error(url: str) -> str | None:
    """What is wrong with a Redis URL, read as ``connect`` reads it but without connecting
    (a scheme redis-py does not know, a port that is no number or out of range); None if
    nothing is."""
    if "://" not in url:
        return "must be a URL such as redis://127.0.0.1:6379/0"
    if unencoded_password(url):
        return ENCODE_PASSWORD
    try:
        disconnect(connect(url))  # opens no socket: connections are made on first use
    except ValueError as error:
        return f"{error} (a URL such as redis://127.0.0.1:6379/0)"
    return None


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://host:port[,host:port...]``)."""
    return url.startswith(CLUSTER_SCHEMES)


class _RedisCluster(RedisCluster):
    """redis-py's cluster client, its cluster exceptions raised as ``ClusterUnavailable``."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisClusterException as error:
            raise ClusterUnavailable(str(error)) from error


class Cluster:
    """A Redis Cluster client: redis-py's ``RedisCluster``, which follows MOVED and ASK and finds
    a failed primary's successor, made on first use rather than here, so that a cluster down
    when kiq starts is an outage kiq's loops wait out (RedisCluster learns the layout when it
    is made). It offers a ``redis.Redis``'s commands; ``send`` and ``disconnect`` know it."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        scheme, _, rest = url.partition("://")
        hosts, _, path = rest.partition("/")
        if path.split("?")[0] not in ("", "0"):
            raise ValueError("a Redis Cluster has database 0 only: redis+cluster://host:port")
        userinfo, _, hosts = hosts.rpartition("@")
        first, *others = hosts.split(",")
        self.url = f"{scheme.removesuffix('+cluster')}://{userinfo + '@' if userinfo else ''}{first}/{path}"
        self.startup = [(host.rpartition(":")[0], int(host.rpartition(":")[2])) for host in others]
        self.options = dict(options)
        self._client: Any = None  # the RedisCluster (redis-py's cluster module is untyped)
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The cluster client, made now if not yet: raises ``ClusterUnavailable`` if no node answers."""
        with self._lock:
            if self._client is None:
                from redis.cluster import ClusterNode

                nodes = [ClusterNode(host, port) for host, port in self.startup]  # type: ignore[no-untyped-call]
                try:
                    self._client = _RedisCluster.from_url(self.url, **self.options,
                                                          **({"startup_nodes": nodes} if nodes else {}))
                except RedisClusterException as error:
                    raise ClusterUnavailable(str(error)) from error
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def send(self, commands: Sequence[tuple[Any, ...]], best_effort: Collection[int] = ()) -> list[Any]:
        """``send`` through a cluster pipeline: raw replies in order, the first error raised."""
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except RedisClusterException as error:
            raise ClusterUnavailable(str(error)) from error
        for reply in replies:  # a node lost, a slot moving too long (TTL exhausted): no error reply
            if isinstance(reply, Exception) and not isinstance(reply, redis.ResponseError):
                raise ClusterUnavailable(f"{type(reply).__name__}: {reply}") from reply
        return _checked(commands, replies, best_effort)

    def disconnect(self) -> None:
        """Close every socket: before a fork, so that none crosses it."""
        if self._client is not None:
            self._client.disconnect_connection_pools()

    def node_of(self, key: str) -> Any:
        """The primary that holds ``key``'s slot now."""
        try:
            return self.client.get_node_from_key(key)
        except RedisClusterException as error:
            raise ClusterUnavailable(str(error)) from error


def _checked(commands: Sequence[tuple[Any, ...]], replies: list[Any],
             best_effort: Collection[int]) -> list[Any]:
    """``replies``, once every one is read; raises the first error reply of a command not in
    ``best_effort``, and logs those of the others."""
    for index in best_effort:
        if isinstance(replies[index], redis.ResponseError):
            logger.warning("a command failed", command=str(commands[index][0]), key=str(commands[index][1]),
                           error=str(replies[index]))
    errors = [reply for index, reply in enumerate(replies)
              if isinstance(reply, redis.ResponseError) and index not in best_effort]
    if errors:
        raise errors[0]
    return replies


def _sentinel_primary(url: str, options: dict[str, Any]) -> redis.Redis:
    parts = urlsplit(url)
    hosts = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        name, _, port = host.rpartition(":")
        hosts.append((name or host, int(port) if name else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a sentinel URL names the service: sentinel://host:26379/mymaster/0")
    if len(path) > 1:
        options["db"] = int(path[1])
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.username:
        options["username"] = unquote(parts.username)
    query = dict(parse_qsl(parts.query))
    sentinel_options: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT}
    if "sentinel_password" in query:
        sentinel_options["password"] = query["sentinel_password"]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_options, **options)
    primary: redis.Redis = sentinel.master_for(path[0], redis_class=redis.Redis)
    return primary


def disconnect(conn: redis.Redis) -> None:
    """Close every socket of a client from ``connect``, its Sentinels' included; the
    client connects again when next used. Before a fork, so that no socket crosses it."""
    if isinstance(conn, Cluster):
        conn.disconnect()
        return
    pool = conn.connection_pool
    pool.disconnect()
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in manager.sentinels if manager else []:
        sentinel.connection_pool.disconnect()


def close_idle(client: redis.Redis) -> None:
    """Close the connections that a client's pool holds idle, not the one ``send`` keeps: for a
    client that talks through ``send``, after one of its rare calls through redis-py, which
    took a second connection from the pool; so that it goes on holding one."""
    if not isinstance(client, Cluster):
        client.connection_pool.disconnect(inuse_connections=False)


def wire(text: str) -> bytes:
    """A string read from Redis, as the exact bytes to send back (hiredis cannot encode surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def redact(url: str) -> str:
    """The URL with every password replaced by ``***``, for logs and messages.

    Users write special characters in passwords raw as often as percent-encoded, and a raw
    ``/``, ``?`` or ``#`` moves where a URL parser ends the host part. So the URL is read
    both ways: as redis-py reads it (``urlsplit``: the userinfo password, query parameters
    whose name contains ``password``, and what a raw ``&`` or ``#`` cut off such a value),
    and with the userinfo ending at the last ``@``. Whatever either reading takes for a
    password is hidden; everything else is shown as written. User names are shown.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    hidden = [False] * len(rest)
    for start, end in _password_spans(rest):
        hidden[start:end] = [True] * (end - start)
    shown = []
    position = 0
    for secret, run in itertools.groupby(hidden):
        length = len(list(run))
        shown.append("***" if secret else rest[position : position + length])
        position += length
    return (f"{scheme}://" if sep else "") + "".join(shown)


def unencoded_password(url: str) -> bool:
    """Whether the URL's userinfo password holds a raw ``/``, ``?`` or ``#``: redis-py would
    read the URL cut short there, its host part ending in part of the password (which its
    error then names). An ``@`` further on in a URL whose host part reads plainly belongs
    to a path or a query."""
    rest = url.partition("://")[2] or url
    netloc_end = _first(rest, "/?#")
    past_host = _last_userinfo_end(rest, netloc_end, _query_passwords(rest, netloc_end)) > netloc_end
    return past_host and not _plain_hosts(rest[:netloc_end])


def _password_spans(rest: str) -> list[tuple[int, int]]:
    """Where ``rest`` (a URL after ``scheme://``) may hold a password, read both ways."""
    netloc_end = _first(rest, "/?#")
    spans = _query_passwords(rest, netloc_end)
    as_redis_py = rest.rfind("@", 0, netloc_end)
    for userinfo_end in (as_redis_py, _last_userinfo_end(rest, netloc_end, spans)):
        colon = rest.find(":", 0, max(userinfo_end, 0))
        if colon >= 0:
            spans.append((colon + 1, userinfo_end))
    return spans


def _last_userinfo_end(rest: str, netloc_end: int, query_passwords: list[tuple[int, int]]) -> int:
    """Where the userinfo ends when a password may hold raw special characters: at the last
    ``@``, unless that one is in a query password of a URL whose hosts read plainly."""
    last_at = rest.rfind("@")
    if any(start <= last_at < end for start, end in query_passwords) and _plain_hosts(rest[:netloc_end]):
        return rest.rfind("@", 0, netloc_end)
    return last_at


def _first(text: str, chars: str, start: int = 0) -> int:
    """Index of the first of ``chars`` in ``text`` from ``start``, or ``len(text)``."""
    return min((i for i in (text.find(c, start) for c in chars) if i >= 0), default=len(text))


def _query_passwords(rest: str, netloc_end: int) -> list[tuple[int, int]]:
    """Spans of ``rest`` (a URL after ``scheme://``) that hold query password values: the value
    of each parameter whose name contains ``password``, together with what a raw ``&`` or
    ``#`` in it cut off (following items without ``=``, then the fragment)."""
    fragment = _first(rest, "#", netloc_end)
    question = rest.find("?", netloc_end, fragment)
    if question < 0:
        return []
    spans: list[tuple[int, int]] = []
    inside, position = False, question + 1
    for item in rest[question + 1 : fragment].split("&"):
        key, equals, _ = item.partition("=")
        if equals and "password" in key.lower():
            spans.append((position + len(key) + 1, position + len(item)))
            inside = True
        elif equals:
            inside = False
        elif inside:  # a raw & in the password before this part
            spans.append((position - 1, position + len(item)))
        position += len(item) + 1
    if inside and fragment < len(rest):  # a raw # in the last password
        spans.append((fragment, len(rest)))
    return spans


def _plain_hosts(netloc: str) -> bool:
    """Whether a host part (after any userinfo) is hosts with numeric ports, as a URL whose
    password has no raw special characters has."""
    hosts = netloc.rpartition("@")[2]
    return all(_HOST.fullmatch(host) for host in hosts.split(","))


_HOST = re.compile(r"(\[[0-9A-Fa-f:.]*\]|[^:\[\]]*)(:[0-9]*)?")


def refusal(error: BaseException) -> str | None:
    """What to check when ``error`` is Redis refusing kiq rather than being out of reach, else None.

    A wrong password, an unknown or disabled ACL user, a user name sent to a Redis without
    ACLs (``WRONGPASS``, ``NOAUTH``, ``ERR AUTH``), a user without a command, key or channel
    that kiq needs (``NOPERM``), or a Redis at its ``maxmemory`` (``OOM``).
    """
    if isinstance(error, LOGIN_REFUSED):
        return "redis refused the login: check the password and the ACL user in the Redis URL"
    if isinstance(error, NoPermissionError):
        return "redis refused a command: check the ACL user's permissions (commands, keys and channels)"
    if isinstance(error, OutOfMemoryError):
        return ("redis refuses writes at its maxmemory: raise maxmemory, free memory, or use noeviction "
                "with room for kiq's keys; jobs wait in Redis meanwhile")
    return None


def members(conn: redis.Redis, key: str) -> list[str] | None:
    """A set's members; None when ``key`` holds another type (written by something else), so
    that a reader can show the rest, or say so."""
    try:
        return [str(member) for member in conn.smembers(key)]
    except redis.ResponseError as error:
        if wrong_type(error):
            return None
        raise


def said(error: BaseException) -> str:
    """``error`` in a line: redis-py's "no master found" appends the whole repr of every Sentinel
    client it asked (thousands of characters); that is cut to the primary's name."""
    if isinstance(error, MasterNotFoundError):
        return str(error).split(" : ")[0] + ": no Sentinel named its primary (are the Sentinels up?)"
    return str(error)


def wrong_type(error: BaseException) -> str | None:
    """What to do when ``error`` is a key of another type than kiq keeps there (written by
    something else), else None: that is no outage, and waiting will not mend it."""
    if isinstance(error, redis.ResponseError) and re.search(r"(^|error: )WRONGTYPE ", str(error)):
        return "a key holds another type than kiq and Sidekiq keep there: fix or delete it"
    return None


def check_access(conn: redis.Redis, key: str, channel: str) -> None:
    """Raise Redis's error unless kiq can log in, run a script that writes ``key`` and publish
    on ``channel``: one command of each kind kiq needs, none of which changes any data
    (``key`` never exists). An ACL user made with too few rights fails here, at start,
    instead of in a worker's first fetch or the scheduler's first subscribe.
    """
    conn.ping()
    conn.eval(ACCESS_CHECK, 1, key)
    conn.publish(channel, "access-check")


def server_version(conn: redis.Redis) -> tuple[int, ...]:
    info = conn.info("server")
    return tuple(int(part) for part in str(info["redis_version"]).split(".")[:3])


def info_of(conn: redis.Redis, key: str, section: str) -> dict[str, Any]:
    """INFO ``section`` of the server that holds ``key``: in a cluster, the primary of its slot."""
    if isinstance(conn, Cluster):
        return conn.info(section, target_nodes=conn.node_of(key))
    return conn.info(section)


def scan_of(conn: redis.Redis, key: str, cursor: int, match: str, count: int) -> tuple[int, list[Any]]:
    """One SCAN call on the server that holds ``key`` (in a cluster, the primary of its slot):
    the next cursor (0 at the end) and the keys found."""
    if isinstance(conn, Cluster):
        cursors: Any
        cursors, keys = conn.scan(cursor, match=match, count=count, target_nodes=conn.node_of(key))
        return int(next(iter(cursors.values()), 0)), keys
    cursor, keys = conn.scan(cursor, match=match, count=count)
    return int(cursor), keys


def keep_trying(attempt: Callable[[], bool], wait: Callable[[float], bool]) -> bool:
    """Call ``attempt`` until it returns True: the one loop that waits for Redis at a start.

    Between tries, ``wait(pause)`` sleeps (a pause growing from 0.1 s to 5 s) and says whether
    to go on; when it says no (told to stop, orphaned), so does this. ``attempt`` reports and
    absorbs its own Redis errors.
    """
    pause = 0.0
    while not attempt():
        pause = min(RETRY_PAUSE_MAX, max(0.1, pause * 2))
        if not wait(pause):
            return False
    return True


class Outage:
    """Logs a Redis outage once when it starts and once when it ends, however many
    threads notice it; each thread keeps its own growing pause."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False
        self.log = log.get("kiq.redis")
        self._hint = ""  # the last refusal said, and when
        self._hint_at = -math.inf
        self._quiet = False  # this outage repeats that refusal: neither it nor its end is logged

    def failed(self, error: Exception, pause: float = 0.0) -> float:
        """Note a failed call; returns the next pause after ``pause``. A refusal that comes and
        goes (a Redis at maxmemory refuses one write, takes the next) is said once a minute."""
        if not self.down:
            self.down = True
            hint = refusal(error) or wrong_type(error)
            now = time.monotonic()
            self._quiet = bool(hint) and hint == self._hint and now - self._hint_at < HINT_REPEAT
            if hint and not self._quiet:
                self._hint, self._hint_at = hint, now
                self.log.error(hint + "; retrying", where=self.what, error=said(error))
            elif not hint:
                self.log.warning("redis unavailable, retrying", where=self.what, error=said(error))
        return min(RETRY_PAUSE_MAX, max(0.1, pause * 2))

    def recovered(self) -> float:
        """Note a call that worked; returns the pause to start from next time (none)."""
        if self.down:
            self.down = False
            if not self._quiet:
                self.log.info("redis available again", where=self.what)
        return 0.0

    def attempt(self, action: Callable[[], T]) -> T | None:
        """``action()``, or None after noting the outage if Redis failed it (for callers that
        simply try again on their next round)."""
        try:
            result = action()
        except redis.RedisError as error:
            self.failed(error)
            return None
        self.recovered()
        return result

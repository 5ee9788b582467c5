"""kiq's settings: defaults, then the YAML file, then command-line flags.

The Redis URL comes from the flag, else the file, else ``KIQ_REDIS_URL``, else
``REDIS_URL``, else the local default; the namespace likewise from ``KIQ_NAMESPACE``,
so that ``kiq start`` and an app's client agree on the keys. Every mistake is a ``ConfigError`` that
names the key, so the CLI can print one clear line and exit with code 2.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiq import log
from kiq.connection import is_cluster, url_error, url_from_env
from kiq.errors import ConfigError, shown
from kiq.execution import MAX_RETENTION, RETENTION
from kiq.payload import DEFAULT_FORMAT, check_format, env_format
from kiq.shards import Shard, Shards
from kiq.shards import parse as parse_shards

__all__ = ["Config", "ConfigError", "load", "parse_queues"]

SPAN_NAMINGS = ("queue", "job_class")  # kiq.otel's options, as Ruby's Sidekiq instrumentation names them
PROPAGATION_STYLES = ("link", "child")
PREFETCH_MAX = 10_000  # jobs: what one round trip may take, with Redis serving nobody else meanwhile
PROCESSES_MAX = 1_000  # worker processes per shard: far beyond any one host, short of a fork bomb
CONCURRENCY_MAX = 10_000  # threads per worker
WEIGHT_MAX = 1_000  # a queue's weight: each unit is a place in a worker's draw (kiq.roundtrip)
HEARTBEAT_MAX = 86_400  # seconds: heartbeat_interval and heartbeat_ttl, Redis EXPIREs


@dataclass
class Config:
    redis_url: str = ""
    namespace: str = ""
    require: list[str] = field(default_factory=list)
    processes: int = 1
    concurrency: int = 10
    queues: list[tuple[str, int]] = field(default_factory=lambda: [("default", 1)])
    strict: bool = True
    timeout: float = 25.0
    boot_timeout: float = 60.0
    worker_timeout: float = 30.0
    max_memory_mb: int = 0
    max_jobs: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9191
    metrics_retention: int = RETENTION  # seconds the execution metrics per class and minute are kept
    prefetch: int | None = None  # jobs a worker may hold beyond its running ones; None: automatic
    log_format: str = "auto"
    log_level: str = "info"
    tag: str = ""
    heartbeat_interval: float = 5.0
    heartbeat_ttl: float = 60.0
    periodic: list[Any] = field(default_factory=list)  # kiq.periodic.Entry, checked at load
    web_user: str = "kiq"  # HTTP basic auth of ``kiq web``, on when a password is set
    web_password: str = ""
    web_hosts: list[str] = field(default_factory=list)  # names kiq web answers to beyond loopback's
    tracing: bool = False  # OpenTelemetry spans and log fields (kiq.otel), on in each worker at boot
    tracing_span_naming: str = "queue"
    tracing_propagation_style: str = "link"
    sidekiq_format: int = DEFAULT_FORMAT  # the Sidekiq job format kiq writes: 6, 7 or 8 (kiq.payload)
    shards: tuple[Shard, ...] = ()  # as configured (kiq.shards); none: the one Redis of redis_url

    @property
    def queue_names(self) -> list[str]:
        return [name for name, _ in self.queues]

    @property
    def routes(self) -> Shards:
        """Every shard and the queues on it: the configured ones, or the one Redis of ``redis_url``."""
        return Shards(self.shards) if self.shards else Shards.single(self.redis_url, self.namespace,
                                                                     self.queue_names)

    def on_shard(self, name: str) -> Config:
        """The settings of the workers that serve shard ``name``: its Redis and namespace, and
        those of ``queues`` that live on it (in their order and weights). A worker serves one shard."""
        routes = self.routes
        shard = routes.named(name)
        queues = [(queue, weight) for queue, weight in self.queues if routes.route(queue) is shard]
        return dataclasses.replace(self, redis_url=shard.url, queues=queues,
                                   namespace=shard.keys(self.namespace).namespace)

    def served_shards(self) -> list[str]:
        """The shards that hold at least one of ``queues``: those that get workers."""
        routes = self.routes
        served = {routes.route(queue).name for queue in self.queue_names}
        return [name for name in routes.names if name in served]


def load(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (if given), apply ``overrides`` (flags), validate.

    An override named ``log.level`` sets one key of a section and keeps the file's others.
    """
    raw: dict[str, Any] = _read(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, sub = key.partition(".")
        if sub:
            existing = raw.get(section)
            raw[section] = {**existing, sub: value} if isinstance(existing, dict) else {sub: value}
        else:
            raw[key] = value
    return _build(raw)


def _read(path: str) -> dict[str, Any]:
    import yaml  # here, not at the top: a start without a config file skips the import (bench/notes.md)

    try:
        with open(path, encoding="utf-8") as file:
            data = yaml.safe_load(file)
    except OSError as error:
        raise ConfigError("config", f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not UTF-8 text: save it as UTF-8") from None
    except RecursionError:
        raise ConfigError("config", f"{path} nests its values too deep") from None
    except ValueError as error:  # a number of more digits than Python converts (4,300)
        raise ConfigError("config", f"{path} holds a value that cannot be read: {error}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ConfigError("config", f"{path} is not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of settings")
    return data


def _build(raw: dict[str, Any]) -> Config:
    config = Config()
    known = {f.name for f in dataclasses.fields(Config)} - {"strict", "metrics_host", "metrics_port",
                                                           "log_format", "log_level", "periodic",
                                                           "web_user", "web_password", "web_hosts", "tracing",
                                                           "tracing_span_naming", "tracing_propagation_style",
                                                           "prefetch"}
    for key, value in raw.items():
        if key == "metrics":
            _section(config, "metrics", value, {"host": "metrics_host", "port": "metrics_port"})
        elif key == "log":
            _section(config, "log", value, {"format": "log_format", "level": "log_level"})
        elif key == "web":
            _section(config, "web", value, {"user": "web_user", "password": "web_password",
                                             "hosts": "web_hosts"})
        elif key == "tracing":
            _tracing(config, value)
        elif key == "prefetch":
            config.prefetch = _prefetch(value)
        elif key == "queues":
            config.queues, config.strict = parse_queues(value)
        elif key == "shards":
            config.shards = tuple(parse_shards(value))
        elif key == "periodic":
            from kiq.periodic import entries_from_config

            config.periodic = entries_from_config(value)
        elif key in known:
            setattr(config, key, _checked(key, value, getattr(config, key)))
        else:
            raise ConfigError(key, "unknown setting")
    if config.shards and "redis_url" in raw:
        raise ConfigError("redis_url", "give it as the first of shards (the default shard), not both")
    from_env = not config.shards and not config.redis_url
    config.redis_url = config.shards[0].url if config.shards else config.redis_url or url_from_env()
    if from_env and (problem := url_error(config.redis_url)) is not None:
        raise ConfigError("KIQ_REDIS_URL" if os.environ.get("KIQ_REDIS_URL") else "REDIS_URL", problem)
    if "namespace" not in raw:
        config.namespace = os.environ.get("KIQ_NAMESPACE", "")
    config.web_password = config.web_password or os.environ.get("KIQ_WEB_PASSWORD", "")
    if "sidekiq_format" not in raw:
        try:
            config.sidekiq_format = env_format()
        except ValueError as error:
            raise ConfigError("KIQ_SIDEKIQ_FORMAT", str(error)) from None
    _validate(config)
    return config


def _section(config: Config, name: str, value: Any, fields: dict[str, str]) -> None:
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a mapping")
    for key, item in value.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}", "unknown setting")
        attr = fields[key]
        setattr(config, attr, _checked(f"{name}.{key}", item, getattr(config, attr)))


def _prefetch(value: Any) -> int | None:
    """``auto`` (None: sized from the jobs' run times), or a number of jobs, 0 turning prefetch
    off. At most ``PREFETCH_MAX``: a worker takes that many in one script call, during which
    Redis serves nobody else."""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= PREFETCH_MAX:
        raise ConfigError("prefetch", f"must be auto or a whole number of jobs from 0 to {PREFETCH_MAX:,}, "
                                      f"not {shown(value)}")
    return value


def _tracing(config: Config, value: Any) -> None:
    """``tracing: true``, or a mapping of its options, which turns it on too."""
    if isinstance(value, dict):
        _section(config, "tracing", value, {"span_naming": "tracing_span_naming",
                                            "propagation_style": "tracing_propagation_style"})
        config.tracing = True
    else:
        config.tracing = _checked("tracing", value, config.tracing)


def _checked(key: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default``, or a ConfigError naming ``key``."""
    if isinstance(default, list):
        if isinstance(value, str):
            value = [part for part in value.split(",") if part]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "must be a list of strings")
        return value
    if isinstance(default, (bool, str)):
        if not isinstance(value, type(default)):
            raise ConfigError(key, f"must be a {type(default).__name__}, not {shown(value)}")
        return value
    return _number(key, value, whole=isinstance(default, int))


def _number(key: str, value: Any, whole: bool) -> int | float:
    """A finite number (a whole one if ``whole``), also from a string; else a ConfigError."""
    kind = "a whole number" if whole else "a number"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(key, f"must be {kind}, not {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be {kind}, not {shown(value)}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond any float: no setting takes one
        finite = False
    if not finite:
        raise ConfigError(key, f"must be {kind} of a sensible size, not {shown(value)}")
    if whole:
        if value != int(value):
            raise ConfigError(key, f"must be {kind}, not {shown(value)}")
        return int(value)
    return float(value)


def parse_queues(value: Any) -> tuple[list[tuple[str, int]], bool]:
    """Queues as ``[name, ...]`` (strict order) or with weights: ``[[name, 3], "name,2", name]``."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError("queues", "must be a non-empty list")
    queues: list[tuple[str, int]] = []
    weighted = False
    for entry in value:
        name, weight = _queue_entry(entry)
        weighted = weighted or weight is not None
        queues.append((name, 1 if weight is None else weight))
    names = [name for name, _ in queues]
    if len(set(names)) != len(names):
        raise ConfigError("queues", "lists a queue twice")
    return queues, not weighted


def _queue_entry(entry: Any) -> tuple[str, int | None]:
    if isinstance(entry, str):
        parts: list[Any] = [part.strip() for part in entry.split(",")]
    elif isinstance(entry, list):
        parts = entry
    else:
        raise ConfigError("queues", f"bad entry {shown(entry)}: use a name or [name, weight]")
    if not parts or not isinstance(parts[0], str) or not parts[0] or len(parts) > 2:
        raise ConfigError("queues", f"bad entry {shown(entry)}: use a name or [name, weight]")
    name = str(parts[0])
    if len(parts) == 1:
        return name, None
    try:
        weight = int(_number("queues", parts[1], whole=True))
    except ConfigError:
        raise ConfigError("queues", f"weight of {shown(name)} must be a whole number") from None
    if not 1 <= weight <= WEIGHT_MAX:
        raise ConfigError("queues", f"weight of {shown(name)} must be from 1 to {WEIGHT_MAX:,}")
    return name, weight


def _validate(config: Config) -> None:
    for key, most in (("processes", PROCESSES_MAX), ("concurrency", CONCURRENCY_MAX)):
        if not 1 <= getattr(config, key) <= most:
            raise ConfigError(key, f"must be from 1 to {most:,}")
    for key in ("heartbeat_interval", "heartbeat_ttl", "boot_timeout"):
        if getattr(config, key) <= 0:
            raise ConfigError(key, "must be positive")
    for key in ("heartbeat_interval", "heartbeat_ttl"):
        if getattr(config, key) > HEARTBEAT_MAX:
            raise ConfigError(key, f"must be at most {HEARTBEAT_MAX:,} seconds (a day)")
    if config.heartbeat_ttl <= config.heartbeat_interval:
        raise ConfigError("heartbeat_ttl", "must be longer than heartbeat_interval")
    for key in ("timeout", "max_memory_mb", "max_jobs", "worker_timeout"):
        if getattr(config, key) < 0:
            raise ConfigError(key, "must not be negative")
    if not 1 <= config.metrics_retention <= MAX_RETENTION:
        days = MAX_RETENTION // 86400
        raise ConfigError("metrics_retention", f"must be from 1 to {MAX_RETENTION} seconds ({days} days): "
                          "Sidekiq's histogram keys name a minute by its day of the month only")
    if not 0 <= config.metrics_port <= 65535:
        raise ConfigError("metrics.port", "must be a port number (0 turns metrics off)")
    try:
        check_format(config.sidekiq_format)
    except ValueError as error:
        raise ConfigError("sidekiq_format", str(error)) from None
    if config.log_level not in log.LEVELS:
        raise ConfigError("log.level", f"must be one of {', '.join(log.LEVELS)}")
    if config.log_format not in log.FORMATS:
        raise ConfigError("log.format", f"must be one of {', '.join(log.FORMATS)}")
    if (problem := url_error(config.redis_url)) is not None:
        raise ConfigError("redis_url", problem)
    if is_cluster(config.redis_url):
        _validate_cluster(config)
    _validate_tracing(config)


def _validate_cluster(config: Config) -> None:
    """On a Redis Cluster a queue's name (and the namespace) go into a hash tag: no braces."""
    for name in config.queue_names:
        if "{" in name or "}" in name:
            raise ConfigError("queues", "a queue on a Redis Cluster needs a name without braces: "
                                        f"{shown(name)}")
    if "{" in config.namespace or "}" in config.namespace:
        raise ConfigError("namespace", "on a Redis Cluster it cannot hold braces: each queue's keys are "
                          "tagged {QUEUE}")


def _validate_tracing(config: Config) -> None:
    if config.tracing_span_naming not in SPAN_NAMINGS:
        raise ConfigError("tracing.span_naming", f"must be one of {', '.join(SPAN_NAMINGS)}")
    if config.tracing_propagation_style not in PROPAGATION_STYLES:
        raise ConfigError("tracing.propagation_style", f"must be one of {', '.join(PROPAGATION_STYLES)}")
    if config.tracing and not _installed("opentelemetry.trace"):
        raise ConfigError("tracing", "needs the OpenTelemetry API: pip install 'kiq[otel]'")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (its parent packages are imported to find out)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False

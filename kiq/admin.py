"""The operator's commands: stats, queues, processes, retries, dead, scheduled, find, enqueue, quiet,
stop, periodic.

Tables for people, ``--json`` for scripts. Exit codes a script can trust:
0 done, 1 some named job or process was not found, 2 bad usage or config,
3 Redis unreachable.

With shards (kiq.shards) every command reads every shard: tables gain a ``shard`` column
and JSON a ``shard`` field; ``kiq stats`` shows each shard and the total. With one Redis the
output is as it always was.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click
import redis

from kiq import exits
from kiq.config import Config, ConfigError, load
from kiq.connection import refusal, said, wrong_type
from kiq.payload import set_format
from kiq.retry import MAX_DELAY
from kiq.terminal import printable

if TYPE_CHECKING:  # imported when a command runs: ``kiq start`` must load no metrics code early
    from kiq.api import Found, Job, ShardedAPI, SortedSet
    from kiq.periodic import Entry

LIST_MAX = 1_000_000  # entries one listing may print
REDIS_URL_HELP = ("Redis URL (default: config, KIQ_REDIS_URL, REDIS_URL, local). Any local user can read "
                  "a flag: give a password in the config file or KIQ_REDIS_URL.")


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add -c/--redis-url/--namespace/--json, and turn them into an ``api`` argument: a
    ``ShardedAPI`` over every shard of the config (one, without ``shards``)."""

    @click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                  help="Take redis_url and namespace from this config file.")
    @click.option("--redis-url", help=REDIS_URL_HELP)
    @click.option("--namespace", help="Key prefix.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @functools.wraps(command)
    def wrapper(config_path: str | None, redis_url: str | None, namespace: str | None, as_json: bool,
                **kwargs: Any) -> None:
        config = settings(config_path, redis_url, namespace)
        from kiq.api import ShardedAPI

        api = ShardedAPI(config.routes, config.namespace)
        try:
            command(api=api, as_json=as_json, **kwargs)
        except redis.RedisError as error:
            redis_failed(error)

    return wrapper


def settings(config_path: str | None, redis_url: str | None, namespace: str | None) -> Config:
    """The config file with the flags applied, or exit 2 with one line naming the bad key."""
    try:
        config = load(config_path, {"redis_url": redis_url, "namespace": namespace})
    except ConfigError as error:
        click.echo(f"kiq: bad config: {error}", err=True)
        sys.exit(exits.CONFIG)
    set_format(config.sidekiq_format)  # what retries and "enqueue now" write
    return config


def redis_failed(error: redis.RedisError) -> NoReturn:
    """Say what Redis's ``error`` means for the operator, and exit."""
    meaning = refusal(error) or wrong_type(error) or "redis unavailable"
    click.echo(f"kiq: {meaning}: {said(error)}", err=True)
    sys.exit(exits.REDIS_UNREACHABLE)


def emit(as_json: bool, data: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if as_json:
        click.echo(to_json(data))
    else:
        click.echo(table(headers, rows))


def to_json(data: Any) -> str:
    """JSON that every reader takes: a score of inf or NaN (anything can write one into Redis)
    is written as a string, not as the Infinity and NaN that only Python and JavaScript read."""
    try:
        return json.dumps(data, indent=2, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), indent=2, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    columns = range(len(headers))
    numeric = [bool(rows) and all(isinstance(row[i], (int, float)) for row in rows) for i in columns]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return printable(" ".join(str(value).split("\n")))  # one row per job, whatever an error message holds


def _ago(epoch: float | None) -> str:
    if not epoch:
        return "-"
    seconds = time.time() - epoch
    if not abs(seconds) <= MAX_DELAY:  # also NaN: a score no job would be given
        return "never" if seconds < 0 or seconds != seconds else "long ago"
    return f"{seconds:.0f}s ago" if seconds >= 0 else f"in {-seconds:.0f}s"


def sharded(api: ShardedAPI, shard: str, data: dict[str, Any],
            row: list[Any]) -> tuple[dict[str, Any], list[Any]]:
    """A JSON object and a table row, with the shard first when there are several."""
    if not api.sharded:
        return data, row
    return {"shard": shard, **data}, [shard, *row]


def headers_of(api: ShardedAPI, headers: list[str]) -> list[str]:
    return ["shard", *headers] if api.sharded else headers


@click.command()
@connection_options
def stats(api: ShardedAPI, as_json: bool) -> None:
    """Counters and sizes, as Sidekiq's dashboard shows them; with shards, each shard's and the total."""
    from kiq.api import total

    each = api.stats()
    data = dict(vars(total(each)))
    if not api.sharded:
        emit(as_json, data, ["stat", "value"], [[k, v] for k, v in data.items()])
        return
    data["shards"] = {name: dict(vars(shard)) for name, shard in each.items()}
    if api.routes.cluster is not None:  # a shard per queue: the table shows the total, JSON each
        emit(as_json, data, ["stat", "value"], [[k, v] for k, v in vars(total(each)).items()])
        return
    rows = [[key, *(getattr(shard, key) for shard in each.values()), value]
            for key, value in vars(total(each)).items()]
    emit(as_json, data, ["stat", *each, "total"], rows)


@click.command()
@connection_options
def queues(api: ShardedAPI, as_json: bool) -> None:
    """Every queue with its size, the jobs workers hold but have not started, the suspects
    waiting to run alone (jobs running at worker crashes), and its latency (age of its oldest
    job not yet started); with shards, the shard it is on."""
    data, rows = [], []
    for q in api.queue_summaries():
        each, row = sharded(api, q.shard, {"queue": q.name, "size": q.size, "prefetched": q.prefetched,
                                           "suspects": q.suspects, "latency": round(q.latency, 3)},
                            [q.name, q.size, q.prefetched, q.suspects, round(q.latency, 3)])
        data.append(each)
        rows.append(row)
    emit(as_json, data, headers_of(api, ["queue", "size", "prefetched", "suspects", "latency_s"]), rows)


@click.command()
@connection_options
def processes(api: ShardedAPI, as_json: bool) -> None:
    """Worker processes with a live heartbeat, on every host (and every shard)."""
    data, rows = [], []
    for p in api.processes():
        each, row = sharded(api, p.shard, {"identity": p.identity, "info": p.info, "busy": p.busy,
                                           "quiet": p.quiet, "rss_kb": p.rss_kb, "beat": p.beat,
                                           "running": p.running},
                            [p.identity, p.info.get("tag", ""), f"{p.busy}/{p.concurrency or '?'}",
                             "quiet" if p.quiet else "", round(p.rss_kb / 1024, 1), _ago(p.beat),
                             ",".join(p.queues)])
        data.append(each)
        rows.append(row)
    emit(as_json, data, headers_of(api, ["identity", "tag", "busy", "state", "rss_mb", "beat", "queues"]),
         rows)


def set_command(name: str, attribute: str, actions: Sequence[str], help_text: str) -> click.Command:
    """``kiq NAME [list|show|ACTION...] [JID...] [--all]`` for one sorted set."""

    @click.command(name=name, help=help_text)
    @click.argument("action", type=click.Choice(["list", "show", *actions]), default="list")
    @click.argument("jids", nargs=-1)
    @click.option("--all", "everything", is_flag=True, help="Act on every entry.")
    @click.option("--limit", type=click.IntRange(1, LIST_MAX), default=50, show_default=True,
                  help="Entries to list.")
    @connection_options
    def command(api: ShardedAPI, as_json: bool, action: str, jids: tuple[str, ...], everything: bool,
                limit: int) -> None:
        sets: list[SortedSet] = [getattr(each, attribute) for each in api.apis.values()]
        if action == "list":
            listing(api, [(entries.api.shard, job) for entries in sets for job in entries.jobs(0, limit)],
                    as_json)
            return
        if action == "show":
            show(sets, jids, everything, as_json)
            return
        if bool(jids) == everything:
            raise click.UsageError(f"{action} needs job ids or --all (not both)")
        done, left = 0, 0
        if everything:
            done = sum(bulk(entries, action, as_json) for entries in sets)
            left = sum(entries.size() for entries in sets)
            missing: list[str] = []
        else:
            missing = list(jids)
            for entries in sets:
                found = [job for job in map(entries.find, missing) if job is not None]
                missing = [jid for jid in missing if jid not in {job.jid for job in found}]
                done += getattr(entries, action)(found)
                left += entries.still_in(found)
        report = {"action": action, "set": sets[0].name, "done": done, "left": left, "not_found": missing}
        click.echo(json.dumps(report) if as_json else f"{action}: {done} job(s)"
                   + (f"; {left} left where they are: {LEFT}" if left else "")
                   + (f"; not found: {' '.join(missing)}" if missing else ""))
        if missing or (left and not everything):
            sys.exit(exits.NOT_FOUND)

    return command


def listing(api: ShardedAPI, jobs: list[tuple[str, Job]], as_json: bool) -> None:
    """Jobs of a set, each with the shard it is on when there are several."""
    data, rows = [], []
    for shard, job in jobs:
        each, row = sharded(api, shard, job.summary(),
                            [job.jid, job.display_class, job.queue, _ago(job.score),
                             job.payload.get("retry_count", ""), job.error, job.display_args])
        data.append(each)
        rows.append(row)
    emit(as_json, data, headers_of(api, ["jid", "class", "queue", "when", "retries", "error", "args"]), rows)


WHEN = {"retry": "next try", "dead": "died", "schedule": "due"}


def show(sets: list[SortedSet], jids: tuple[str, ...], everything: bool, as_json: bool) -> None:
    """Each named job whole: its fields, its last error and the backtrace it kept."""
    if not jids or everything:
        raise click.UsageError("show needs job ids (not --all)")
    name = sets[0].name
    found = {jid: next((job for job in (entries.find(jid) for entries in sets) if job), None) for jid in jids}
    shown = [job for job in found.values() if job is not None]
    if as_json:
        click.echo(to_json([{"set": name, "at": job.score, "job": job.payload, "backtrace": job.backtrace}
                            for job in shown]))
    else:
        click.echo("\n\n".join(describe(job, WHEN[name]) for job in shown))
    missing = [jid for jid, job in found.items() if job is None]
    if missing:
        click.echo(f"not found: {' '.join(missing)}", err=True)
        sys.exit(exits.NOT_FOUND)


def describe(job: Job, when: str) -> str:
    """One job as lines of ``label  value``, then its backtrace."""
    payload = job.payload
    fields: list[tuple[str, Any]] = [("jid", job.jid), ("class", job.display_class), ("queue", job.queue),
                                     ("args", json.dumps(job.display_args))]
    if "kwargs" in payload:
        fields.append(("kwargs", json.dumps(payload["kwargs"])))
    if job.score is not None:  # a sorted set's entry; a job in a queue or running has none
        fields.append((when, _ago(job.score)))
    fields.append(("retry", payload.get("retry", True)))
    if "retry_count" in payload:
        fields.append(("retry count", payload["retry_count"]))
    for key, label in (("failed_at", "failed"), ("retried_at", "retried")):
        if key in payload:
            fields.append((label, _ago(job.time(key))))
    if job.error:
        fields.append(("error", job.error))
    lines = [f"{label:<12}{printable(str(value), keep=chr(10))}" for label, value in fields]
    if job.backtrace:
        lines += ["backtrace   (innermost first)", *(f"  {printable(frame)}" for frame in job.backtrace)]
    elif job.error and (job.payload or {}).get("backtrace"):
        lines.append("backtrace   none: nothing the job raised (a class no worker knew)")
    elif job.error:
        lines.append("backtrace   none kept (set backtrace = True on the job class to keep one)")
    return "\n".join(lines)


LEFT = ("not job hashes (kiq retries show them), or their queue's key or the dead set's is of another "
        "type (fix or delete it)")


def bulk(entries: SortedSet, action: str, as_json: bool) -> int:
    """Apply ``action`` to every entry, with a progress bar on a terminal."""
    method = getattr(entries, f"{action}_all")
    total = entries.size()
    if as_json or not sys.stderr.isatty() or total < 1000:
        return int(method())
    with click.progressbar(length=total, label=f"{action} {entries.name}", file=sys.stderr) as bar:
        return int(method(progress=bar.update))


retries = set_command("retries", "retries", ["retry", "delete", "kill"],
                      "List the retry set, show some jobs of it whole (with their error and backtrace), "
                      "or retry now / delete / kill (to dead) some or --all of it.")
dead = set_command("dead", "dead", ["retry", "delete"],
                   "List the dead set, show some jobs of it whole (with their error and backtrace), "
                   "or retry / delete some or --all of it.")
scheduled = set_command("scheduled", "scheduled", ["retry", "delete"],
                        "List scheduled jobs, show some of them whole, or enqueue now (retry) / delete "
                        "some or --all of them.")


@click.command()
@click.argument("jid")
@connection_options
def find(api: ShardedAPI, as_json: bool, jid: str) -> None:
    """Where the job JID is: waiting in a queue, waiting to run alone, scheduled, retrying, dead,
    running or taken by a worker; each place with the job whole. Exits 1 if it is nowhere (it
    ran, or never was)."""
    found = api.find(jid)
    if as_json:
        click.echo(json.dumps([sharded(api, each.shard, {"place": each.place, "name": each.name,
                                                         "at": each.job.score, "since": each.since,
                                                         "job": each.job.payload}, [])[0]
                               for each in found], indent=2, default=str))
    elif found:
        click.echo("\n\n".join(f"{_place(each)}{f' on shard {each.shard}' if api.sharded else ''}\n"
                                f"{describe(each.job, WHEN.get(each.place, ''))}" for each in found))
    if not found:
        click.echo(f"not found: {jid}", err=True)
        sys.exit(exits.NOT_FOUND)


def _place(found: Found) -> str:
    name = printable(found.name)
    if found.place == "queue":
        return f"waiting in queue {name}"
    if found.place == "running":
        return f"running in {name}, started {_ago(found.since)}"
    if found.place == "taken":
        return f"taken by {name} (about to start, or started since its last heartbeat)"
    if found.place == "suspect":
        return f"waiting to run alone, queue {name} (it was running at worker crashes beside other jobs)"
    return {"schedule": "scheduled", "retry": "in the retry set", "dead": "in the dead set"}[found.place]


@click.command()
@click.argument("job_class")
@click.argument("args", nargs=-1)
@click.option("-q", "--queue", default="default", show_default=True)
@click.option("--in", "delay", type=float, help="Run this many seconds from now.")
@click.option("-k", "--kwarg", "kwargs", multiple=True, help="key=value keyword argument. Repeatable.")
@connection_options
def enqueue(api: ShardedAPI, as_json: bool, job_class: str, args: tuple[str, ...], queue: str,
            delay: float | None, kwargs: tuple[str, ...]) -> None:
    """Enqueue JOB_CLASS (its wire name) with ARGS; each ARG is read as JSON, else taken as a string."""
    from kiq.client import Client

    keywords = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--kwarg {item!r}: use key=value")
        keywords[key] = _value(value)
    client = Client(namespace=api.default.keys.namespace, connection=api.default.redis,
                    shards=api.routes if api.sharded else None)
    at = time.time() + delay if delay is not None else None
    if delay is not None and not (math.isfinite(delay) and abs(delay) <= MAX_DELAY):
        raise click.UsageError(f"--in {delay:g} is no time a job can wait for: at most a century from now")
    try:
        job = client.enqueue(job_class, [_value(arg) for arg in args], keywords, queue=queue, at=at)
    except (TypeError, ValueError) as error:  # an empty class name; --in nan, inf or past a century
        raise click.UsageError(str(error)) from None
    click.echo(json.dumps(vars(job)) if as_json else job.jid)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise click.UsageError(f"an argument's JSON is nested too deep: {text[:40]}...") from None


def process_command(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("identities", nargs=-1)
    @click.option("--all", "everything", is_flag=True, help="Every live process.")
    @connection_options
    def command(api: ShardedAPI, as_json: bool, identities: tuple[str, ...], everything: bool) -> None:
        if bool(identities) == everything:
            raise click.UsageError(f"{name} needs process identities or --all (not both)")
        live = {p.identity: p.shard for p in api.processes()}
        targets = sorted(live) if everything else list(identities)
        missing = [ident for ident in targets if ident not in live]
        sent, failed = [], {}
        for ident in targets:
            if ident in live:
                try:
                    getattr(api.apis[live[ident]], name)(ident)
                    sent.append(ident)
                except redis.ResponseError as error:  # its signals key is of another type: the others still
                    failed[ident] = str(error)
        click.echo(json.dumps({"sent": sent, "not_found": missing, "failed": failed}) if as_json
                   else "\n".join([f"{name}: {ident}" for ident in sent]
                                  + [f"not found: {ident}" for ident in missing]
                                  + [f"failed: {ident}: {error}" for ident, error in failed.items()]))
        if failed:
            sys.exit(exits.REDIS_UNREACHABLE)
        if missing:
            sys.exit(exits.NOT_FOUND)

    return command


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Config file with periodic entries and the modules (require) that declare more.")
@click.option("-r", "--require", "require", multiple=True, help="Module that declares entries. Repeatable.")
@click.option("--redis-url", help=REDIS_URL_HELP)
@click.option("--namespace", help="Key prefix.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def periodic(config_path: str | None, require: tuple[str, ...], redis_url: str | None, namespace: str | None,
             as_json: bool) -> None:
    """Periodic entries with their last and next run."""
    from kiq.api import ShardedAPI

    config = settings(config_path, redis_url, namespace)
    entries = periodic_entries(config, require)
    try:
        api = ShardedAPI(config.routes, config.namespace)
        found = api.periodic(entries)  # each entry's state lives on the shard of its queue
    except redis.RedisError as error:
        redis_failed(error)
    data, rows = [], []
    for row in found:
        shard = row.pop("shard")
        last, following = row["last"].isoformat() if row["last"] else "-", row["next"].isoformat()
        row |= {"last": last if row["last"] else None, "next": following}  # the same ISO 8601 in --json
        each, table_row = sharded(api, shard, row, [row["name"], row["cron"], row["tz"], row["class"],
                                                    row["queue"], last, following])
        data.append(each)
        rows.append(table_row)
    emit(as_json, data, headers_of(api, ["name", "cron", "tz", "class", "queue", "last", "next"]), rows)


def periodic_entries(config: Config, require: Sequence[str]) -> list[Entry]:
    """The config file's periodic entries and those its ``require`` modules (and ``require``)
    declare, bound to their job classes; or exit 2 with the reason."""
    from kiq.periodic import bind_jobs, declared, merge
    from kiq.registry import registered
    from kiq.supervisor import AppLoadError, load_app

    try:
        load_app([*config.require, *require])
        return bind_jobs(merge(config.periodic, declared()), registered())
    except (AppLoadError, ConfigError) as error:
        click.echo(f"kiq: {error}", err=True)
        sys.exit(exits.CONFIG)


@click.group(invoke_without_command=True)
@click.pass_context
def shards(context: click.Context) -> None:
    """The shards: each one's queues (``kiq shards list``), and moving a queue (``kiq shards move``)."""
    if context.invoked_subcommand is None:
        context.invoke(shards_list)


@shards.command(name="list")
@connection_options
def shards_list(api: ShardedAPI, as_json: bool) -> None:
    """The queues found on each shard, with their size; a queue found on a shard the config does
    not put it on is ``misplaced`` (what ``kiq shards move`` is for). JSON adds each shard's URL
    and the queues the config names for it."""
    from kiq.api import queue_summaries
    from kiq.connection import redact

    data, rows = [], []
    for shard in api.routes:
        found = []
        for summary in queue_summaries(api.apis[shard.name]):
            home = api.routes.route(summary.name).name
            state = "" if home == shard.name else f"misplaced: lives on {home}"
            found.append({"queue": summary.name, "size": summary.size, "state": state})
            rows.append([shard.name, summary.name, summary.size, state])
        data.append({"shard": shard.name, "url": redact(shard.url), "default": shard is api.routes.default,
                     "named": list(shard.queues), "queues": found})
    emit(as_json, data, ["shard", "queue", "size", "state"], rows)


@shards.command(name="move")
@click.argument("queue")
@click.option("--to", "to", required=True, help="The shard the queue now lives on.")
@click.option("--from", "source", help="Move from this shard only (default: every other shard).")
@click.option("--force", is_flag=True, help="Move even though the config puts the queue on another shard.")
@connection_options
def shards_move(api: ShardedAPI, as_json: bool, queue: str, to: str, source: str | None, force: bool) -> None:
    """Move every job of QUEUE (waiting, scheduled, retrying, dead) from the other shards to
    shard TO, each copied first and removed second: none is lost (docs/operations.md, Moving a
    queue to another shard). Run it after the reload that put QUEUE on TO, and again until it
    moves nothing."""
    from kiq.move import move_queue

    if api.routes.cluster is not None:
        raise click.UsageError("on a Redis Cluster each queue is a shard of its own, which the cluster "
                               "places itself: there is no queue to move (redis-cli --cluster reshard "
                               "moves slots)")
    try:
        target = api.api(to)
        sources = [api.api(source)] if source else [each for each in api.apis.values() if each is not target]
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    home = api.routes.route(queue).name
    if home != to and not force:
        raise click.UsageError(f"the config puts queue {queue!r} on shard {home!r}, not {to!r}: change "
                               "the config (and reload) first, or pass --force")
    results = [move_queue(each, target, queue) for each in sources if each is not target]
    data = [{"queue": queue, "from": each.source, "to": each.target, "moved": each.moved,
             "taken": each.taken, "doubled": each.doubled} for each in results]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for each in results:
        parts = ", ".join(f"{count} {place}" for place, count in each.moved.items())
        click.echo(f"moved {each.total} job(s) of {queue} from {each.source} to {each.target}: {parts}"
                   + (f"; {each.taken} taken on {each.source} meanwhile" if each.taken else "")
                   + (f", {each.doubled} of them on both shards" if each.doubled else ""))


quiet = process_command("quiet", "Ask processes to stop taking jobs (as Sidekiq's Web UI Quiet button).")
stop = process_command("stop", "Ask processes to finish their jobs and exit (as the Web UI Stop button).")

COMMANDS = (stats, queues, processes, retries, dead, scheduled, find, enqueue, quiet, stop, periodic, shards)

"""The operator's commands: stats, queues, processes, retries, dead, scheduled, find, enqueue, quiet,
stop, periodic.

Tables for people, ``--json`` for scripts. Exit codes a script can trust:
0 done, 1 some named job or process was not found, 2 bad usage or config,
3 Redis unreachable.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click
import redis

from kiq import exits
from kiq.config import Config, ConfigError, load
from kiq.connection import refusal
from kiq.payload import set_format

if TYPE_CHECKING:  # imported when a command runs: ``kiq start`` must load no metrics code early
    from kiq.api import API, Found, Job, SortedSet
    from kiq.periodic import Entry

REDIS_URL_HELP = ("Redis URL (default: config, KIQ_REDIS_URL, REDIS_URL, local). Any local user can read "
                  "a flag: give a password in the config file or KIQ_REDIS_URL.")


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add -c/--redis-url/--namespace/--json, and turn them into an ``api`` argument."""

    @click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                  help="Take redis_url and namespace from this config file.")
    @click.option("--redis-url", help=REDIS_URL_HELP)
    @click.option("--namespace", help="Key prefix.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @functools.wraps(command)
    def wrapper(config_path: str | None, redis_url: str | None, namespace: str | None, as_json: bool,
                **kwargs: Any) -> None:
        config = settings(config_path, redis_url, namespace)
        from kiq.api import API

        api = API(config.redis_url, config.namespace)
        try:
            command(api=api, as_json=as_json, **kwargs)
        except redis.RedisError as error:
            click.echo(f"kiq: {refusal(error) or 'redis unavailable'}: {error}", err=True)
            sys.exit(exits.REDIS_UNREACHABLE)

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


def emit(as_json: bool, data: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(table(headers, rows))


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
    return " ".join(str(value).split("\n"))  # one row per job, whatever an error message holds


def _ago(epoch: float | None) -> str:
    if not epoch:
        return "-"
    seconds = time.time() - epoch
    return f"{seconds:.0f}s ago" if seconds >= 0 else f"in {-seconds:.0f}s"


@click.command()
@connection_options
def stats(api: API, as_json: bool) -> None:
    """Counters and sizes, as Sidekiq's dashboard shows them."""
    s = api.stats()
    data = dict(vars(s))
    emit(as_json, data, ["stat", "value"], [[k, v] for k, v in data.items()])


@click.command()
@connection_options
def queues(api: API, as_json: bool) -> None:
    """Every queue with its size, the jobs workers hold but have not started, and its latency
    (age of its oldest job not yet started)."""
    from kiq.api import queue_summaries

    rows = [[q.name, q.size, q.prefetched, round(q.latency, 3)] for q in queue_summaries(api)]
    data = [{"queue": name, "size": size, "prefetched": held, "latency": latency}
            for name, size, held, latency in rows]
    emit(as_json, data, ["queue", "size", "prefetched", "latency_s"], rows)


@click.command()
@connection_options
def processes(api: API, as_json: bool) -> None:
    """Worker processes with a live heartbeat, on every host."""
    found = api.processes()
    rows = [[p.identity, p.info.get("tag", ""), f"{p.busy}/{p.concurrency or '?'}",
             "quiet" if p.quiet else "", round(p.rss_kb / 1024, 1), _ago(p.beat),
             ",".join(p.queues)] for p in found]
    data = [{"identity": p.identity, "info": p.info, "busy": p.busy, "quiet": p.quiet, "rss_kb": p.rss_kb,
             "beat": p.beat, "running": p.running} for p in found]
    emit(as_json, data, ["identity", "tag", "busy", "state", "rss_mb", "beat", "queues"], rows)


def set_command(name: str, attribute: str, actions: Sequence[str], help_text: str) -> click.Command:
    """``kiq NAME [list|show|ACTION...] [JID...] [--all]`` for one sorted set."""

    @click.command(name=name, help=help_text)
    @click.argument("action", type=click.Choice(["list", "show", *actions]), default="list")
    @click.argument("jids", nargs=-1)
    @click.option("--all", "everything", is_flag=True, help="Act on every entry.")
    @click.option("--limit", type=int, default=50, show_default=True, help="Entries to list.")
    @connection_options
    def command(api: API, as_json: bool, action: str, jids: tuple[str, ...], everything: bool,
                limit: int) -> None:
        entries: SortedSet = getattr(api, attribute)
        if action == "list":
            listing(entries.jobs(0, limit), as_json)
            return
        if action == "show":
            show(entries, jids, everything, as_json)
            return
        if bool(jids) == everything:
            raise click.UsageError(f"{action} needs job ids or --all (not both)")
        if everything:
            done = bulk(entries, action, as_json)
            missing: list[str] = []
        else:
            found = {jid: entries.find(jid) for jid in jids}
            missing = [jid for jid, job in found.items() if job is None]
            done = getattr(entries, action)([job for job in found.values() if job is not None])
        report = {"action": action, "set": entries.name, "done": done, "not_found": missing}
        click.echo(json.dumps(report) if as_json else f"{action}: {done} job(s)"
                   + (f"; not found: {' '.join(missing)}" if missing else ""))
        if missing:
            sys.exit(exits.NOT_FOUND)

    return command


def listing(jobs: list[Job], as_json: bool) -> None:
    rows = [[job.jid, job.job_class, job.queue, _ago(job.score), job.payload.get("retry_count", ""),
             job.error, job.args] for job in jobs]
    emit(as_json, [job.summary() for job in jobs], ["jid", "class", "queue", "when", "retries", "error",
                                                    "args"], rows)


WHEN = {"retry": "next try", "dead": "died", "schedule": "due"}


def show(entries: SortedSet, jids: tuple[str, ...], everything: bool, as_json: bool) -> None:
    """Each named job whole: its fields, its last error and the backtrace it kept."""
    if not jids or everything:
        raise click.UsageError("show needs job ids (not --all)")
    found = {jid: entries.find(jid) for jid in jids}
    shown = [job for job in found.values() if job is not None]
    if as_json:
        click.echo(json.dumps([{"set": entries.name, "at": job.score, "job": job.payload,
                                "backtrace": job.backtrace} for job in shown], indent=2, default=str))
    else:
        click.echo("\n\n".join(describe(job, WHEN[entries.name]) for job in shown))
    missing = [jid for jid, job in found.items() if job is None]
    if missing:
        click.echo(f"not found: {' '.join(missing)}", err=True)
        sys.exit(exits.NOT_FOUND)


def describe(job: Job, when: str) -> str:
    """One job as lines of ``label  value``, then its backtrace."""
    payload = job.payload
    fields: list[tuple[str, Any]] = [("jid", job.jid), ("class", job.job_class), ("queue", job.queue),
                                     ("args", json.dumps(job.args))]
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
    lines = [f"{label:<12}{value}" for label, value in fields]
    if job.backtrace:
        lines += ["backtrace   (innermost first)", *(f"  {frame}" for frame in job.backtrace)]
    elif job.error:
        lines.append("backtrace   none kept (set backtrace = True on the job class to keep one)")
    return "\n".join(lines)


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
def find(api: API, as_json: bool, jid: str) -> None:
    """Where the job JID is: waiting in a queue, scheduled, retrying, dead or running; each place
    with the job whole. Exits 1 if it is nowhere (it ran, or never was)."""
    from kiq.api import find as find_job

    found = find_job(jid, api)
    if as_json:
        click.echo(json.dumps([{"place": each.place, "name": each.name, "at": each.job.score,
                                "since": each.since, "job": each.job.payload} for each in found],
                              indent=2, default=str))
    elif found:
        click.echo("\n\n".join(f"{_place(each)}\n{describe(each.job, WHEN.get(each.place, ''))}"
                                for each in found))
    if not found:
        click.echo(f"not found: {jid}", err=True)
        sys.exit(exits.NOT_FOUND)


def _place(found: Found) -> str:
    if found.place == "queue":
        return f"waiting in queue {found.name}"
    if found.place == "running":
        return f"running in {found.name}, started {_ago(found.since)}"
    return {"schedule": "scheduled", "retry": "in the retry set", "dead": "in the dead set"}[found.place]


@click.command()
@click.argument("job_class")
@click.argument("args", nargs=-1)
@click.option("-q", "--queue", default="default", show_default=True)
@click.option("--in", "delay", type=float, help="Run this many seconds from now.")
@click.option("-k", "--kwarg", "kwargs", multiple=True, help="key=value keyword argument. Repeatable.")
@connection_options
def enqueue(api: API, as_json: bool, job_class: str, args: tuple[str, ...], queue: str,
            delay: float | None, kwargs: tuple[str, ...]) -> None:
    """Enqueue JOB_CLASS (its wire name) with ARGS; each ARG is read as JSON, else taken as a string."""
    from kiq.client import Client

    keywords = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--kwarg {item!r}: use key=value")
        keywords[key] = _value(value)
    client = Client(namespace=api.keys.namespace, connection=api.redis)
    at = time.time() + delay if delay else None
    job = client.enqueue(job_class, [_value(arg) for arg in args], keywords, queue=queue, at=at)
    click.echo(json.dumps(vars(job)) if as_json else job.jid)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def process_command(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("identities", nargs=-1)
    @click.option("--all", "everything", is_flag=True, help="Every live process.")
    @connection_options
    def command(api: API, as_json: bool, identities: tuple[str, ...], everything: bool) -> None:
        if bool(identities) == everything:
            raise click.UsageError(f"{name} needs process identities or --all (not both)")
        live = {p.identity for p in api.processes()}
        targets = sorted(live) if everything else list(identities)
        missing = [ident for ident in targets if ident not in live]
        for ident in targets:
            if ident in live:
                getattr(api, name)(ident)
        sent = [ident for ident in targets if ident in live]
        click.echo(json.dumps({"sent": sent, "not_found": missing}) if as_json
                   else "\n".join([f"{name}: {ident}" for ident in sent]
                                  + [f"not found: {ident}" for ident in missing]))
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
    from kiq.connection import connect
    from kiq.keys import Keys
    from kiq.periodic import describe

    config = settings(config_path, redis_url, namespace)
    entries = periodic_entries(config, require)
    try:
        rows = describe(connect(config.redis_url, retry=True), Keys(config.namespace), entries)
    except redis.RedisError as error:
        click.echo(f"kiq: redis unavailable: {error}", err=True)
        sys.exit(exits.REDIS_UNREACHABLE)
    table_rows = [[row["name"], row["cron"], row["tz"], row["class"], row["queue"],
                   row["last"].isoformat() if row["last"] else "-", row["next"].isoformat()] for row in rows]
    emit(as_json, rows, ["name", "cron", "tz", "class", "queue", "last", "next"], table_rows)


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


quiet = process_command("quiet", "Ask processes to stop taking jobs (as Sidekiq's Web UI Quiet button).")
stop = process_command("stop", "Ask processes to finish their jobs and exit (as the Web UI Stop button).")

COMMANDS = (stats, queues, processes, retries, dead, scheduled, find, enqueue, quiet, stop, periodic)

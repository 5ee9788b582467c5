"""The ``kiq`` command."""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import click

from kiq import __version__, exits, log
from kiq.config import ConfigError, load

SAMPLES_PREFIX = "kiq-metrics-"
OWNER = ".owner"  # the lock file a master's samples folder is known to be in use by
ABANDONED_AFTER = 60.0  # seconds: a samples folder younger than this is never judged abandoned


@click.group()
@click.version_option(__version__, prog_name="kiq")
def main() -> None:
    """kiq: background jobs for Python, in Sidekiq's Redis format."""


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (see config/kiq.yml).")
@click.option("-q", "--queue", "queues", multiple=True,
              help="Queue to work, optionally weighted: -q critical,3 -q default. Repeatable.")
@click.option("-p", "--processes", type=int, help="Worker processes to fork.")
@click.option("--concurrency", type=int, help="Threads per worker process.")
@click.option("-r", "--require", "require", multiple=True, help="Module that defines jobs. Repeatable.")
@click.option("--redis-url", help="Redis URL (default: KIQ_REDIS_URL, REDIS_URL, then local). Any local "
              "user can read a flag: give a password in the config file or KIQ_REDIS_URL.")
@click.option("--namespace", help="Prefix for every Redis key.")
@click.option("-t", "--timeout", type=float, help="Seconds a graceful stop waits for running jobs.")
@click.option("--metrics-port", type=int, help="Port of the /metrics endpoint (0 turns it off).")
@click.option("--log-level", type=click.Choice(log.LEVELS))
@click.option("--log-format", type=click.Choice(log.FORMATS))
def start(config_path: str | None, queues: tuple[str, ...], require: tuple[str, ...],
          **flags: Any) -> None:
    """Run the master, which forks and supervises the worker processes."""
    # Every process of this run writes its metrics here; it must be set before
    # anything imports prometheus_client, hence before kiq.master.
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    remove_abandoned_samples(tempfile.gettempdir())
    samples = tempfile.mkdtemp(prefix=SAMPLES_PREFIX)
    owner = os.open(os.path.join(samples, OWNER), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(owner, fcntl.LOCK_SH)  # held for as long as this master runs (and by its children)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = samples
    try:
        _start(config_path, queues, require, flags)
    finally:
        shutil.rmtree(samples, ignore_errors=True)
        os.close(owner)


def remove_abandoned_samples(folder: str) -> None:
    """Remove the samples folders of masters that were killed (SIGKILL, a crash) before they
    could: nothing holds their owner lock any more. A live master's (or, with its master
    killed, its workers'), in this or another container sharing the folder, is locked, and
    left."""
    for path in glob.glob(os.path.join(folder, SAMPLES_PREFIX + "*")):
        try:
            if time.time() - os.stat(path).st_mtime < ABANDONED_AFTER:
                continue  # a master starting may not hold its lock yet
            fd = os.open(os.path.join(path, OWNER), os.O_RDWR)
        except OSError:  # gone, or not ours to judge (another user's, an older kiq's without an owner)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its master (or one of its workers) runs
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def _start(config_path: str | None, queues: tuple[str, ...], require: tuple[str, ...],
           flags: dict[str, Any]) -> None:
    from kiq.connection import RedisRefused
    from kiq.master import Master
    from kiq.supervisor import AppLoadError

    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if queues:
        overrides["queues"] = list(queues)
    if require:
        overrides["require"] = list(require)
    for flag in ("log_level", "log_format", "metrics_port"):
        if flag in overrides:
            overrides[flag.replace("_", ".")] = overrides.pop(flag)
    try:
        config = load(config_path, overrides)
    except ConfigError as error:
        click.echo(f"kiq: bad config: {error}", err=True)
        sys.exit(exits.CONFIG)
    log.setup(config.log_level, config.log_format)
    try:
        code = Master(config, reload=lambda: load(config_path, overrides)).run()
    except AppLoadError as error:
        click.echo(f"kiq: {error}", err=True)
        sys.exit(exits.APP_LOAD)
    except RedisRefused as error:
        click.echo(f"kiq: {error}", err=True)
        sys.exit(exits.REDIS_REFUSED)
    sys.exit(code)



def _add_operator_commands() -> None:
    from kiq.admin import COMMANDS
    from kiq.generate import generate
    from kiq.web.command import web

    for command in COMMANDS:
        main.add_command(command)
    main.add_command(generate)
    main.add_command(web)


_add_operator_commands()

"""The master process: runs the scheduler and supervises generations of workers.

The master never imports the app. Each generation is a supervisor process
forked from the master that imports the app as it is on disk, reports on a
pipe whether that worked, and forks the workers (which share its loaded code
copy-on-write). A reload (HUP) re-reads the config and starts a new
generation; once it has loaded the app, the older generations are told to
stop, so their workers finish their jobs and exit while the new ones already
work. A config or app that fails to load leaves the running generation alone.
The master never blocks on a loading generation, so it hears TERM and HUP while
an import hangs; a generation that has not loaded the app within
``boot_timeout``, or that a newer HUP supersedes, is killed.

Signal handlers only queue the signal (kiq.signals); the main loop calls one
short method per signal. The scheduler thread does its Redis work under
``fork_lock`` and the master forks only while holding it, so a child never
inherits a lock that another thread held.

With shards (kiq.shards) the master waits for every shard's Redis and runs one scheduler
thread and one host-loss sweep per shard; its /metrics reads every shard. Which queues live
on which shard may change on a reload; the shards themselves (names, URLs) need a restart.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
import setproctitle

from kiq import exits, exporter, inherited, log, metrics
from kiq.config import Config, ConfigError
from kiq.connection import RedisRefused, check_access, connect, keep_trying, redact, refusal
from kiq.keys import Keys
from kiq.payload import set_format
from kiq.recovery import Recovery
from kiq.scheduler import Scheduler
from kiq.shards import Shard
from kiq.signals import SignalQueue, fork_holding, kill
from kiq.supervisor import KILL_GRACE, SUPERVISOR_SIGNALS, AppLoadError, Supervisor, describe
from kiq.sweep import Sweeper
from kiq.watch import watched

MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN,
                  signal.SIGTTOU, signal.SIGTSTP, signal.SIGUSR1)
WORKER_CONNECTIONS = 4  # a worker's connections to Redis besides one per queue (fetch, heartbeat...)
MASTER_ONLY = ("namespace", "metrics_host", "metrics_port", "sidekiq_format")


@dataclass
class Generation:
    number: int
    pid: int
    config: Config
    ready_fd: int
    state: str = "loading"  # loading, current, retiring
    killed: str = ""  # why the master SIGKILLed it, if it did
    started: float = 0.0
    processes: int = 0  # per shard served: the config's count, moved by TTIN and TTOU

    @property
    def workers(self) -> int:
        """The workers it keeps: ``processes`` for each shard that holds one of its queues."""
        return self.processes * len(self.config.served_shards())


class Master:
    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        """``reload`` re-reads the config file and flags for HUP."""
        self.config = config
        self.reload = reload or (lambda: config)
        self.generations: list[Generation] = []
        self.counter = 0
        self.crashes = 0
        self.restart_at: float | None = None
        self.stopping = False
        self.redis_reported = False  # "redis unreachable" logged while waiting at start
        self.quiet = False
        self.booted = False  # a generation has loaded the app since the start
        self.load_error = ""  # why the app never loaded, if it did not
        self.exit_code = 0
        self.fork_lock = threading.Lock()
        self.log = log.get("kiq.master")

    def run(self) -> int:
        """Run until TERM or INT; returns the exit code. Raises AppLoadError if the first
        generation fails to load the app, or does not within ``boot_timeout``."""
        setproctitle.setproctitle("kiq master [booting]")
        set_format(self.config.sidekiq_format)  # before the scheduler starts and any fork
        self.signals = SignalQueue(MASTER_SIGNALS)
        self.shards = list(self.config.routes)
        self.redis: dict[str, redis.Redis] = {}  # by URL: a cluster's queue shards share one client
        self.conns = {shard.name: self._connect(shard.url) for shard in self.shards}
        if not self._wait_for_redis():
            return 0
        self.sweepers: dict[str, Sweeper] = {}
        self.schedulers: dict[str, Scheduler] = {}
        self.metrics_conns: dict[str, tuple[redis.Redis, Keys]] = {}  # what /metrics reads, by shard
        self.metrics_redis: dict[str, redis.Redis] = {}  # its clients, by URL
        self._attach(self.shards)
        self._serve_metrics()
        self.log.info("master started", pid=os.getpid(), redis=redact(self.config.redis_url),
                      **({"shards": {shard.name: redact(shard.url) for shard in self.shards}}
                         if len(self.shards) > 1 else {}))
        self._start_generation(self.config)
        while not self.stopping:
            self._title()
            loading = [g.ready_fd for g in self.generations if g.state == "loading"]
            for signum in self.signals.wait(self._next_wakeup(), also=loading):
                self._handle(signum)
            self._check_loading()
            self._reap()
            self._restart_if_due()
            for sweeper in list(self.sweepers.values()):
                sweeper.sweep_if_due()
        self._stop_generations()
        for scheduler in self.schedulers.values():
            scheduler.stop()
        if self.load_error:
            raise AppLoadError(self.load_error)
        self.log.info("master stopped")
        return self.exit_code

    def _connect(self, url: str) -> redis.Redis:
        """The master's client of the Redis (or cluster) at ``url``, made once."""
        if url not in self.redis:
            self.redis[url] = connect(url, name="kiq-master")
        return self.redis[url]

    def _attach(self, shards: Iterable[Shard]) -> None:
        """Start a scheduler and a host-loss sweep for each of ``shards`` that has none yet: on
        a Redis Cluster each queue is a shard, so a reload that adds a queue adds one."""
        for shard in shards:
            if shard.name in self.schedulers:
                continue
            if shard not in self.shards:
                self.shards.append(shard)
            keys = shard.keys(self.config.namespace)
            conn = self.conns.setdefault(shard.name, self._connect(shard.url))
            self.sweepers[shard.name] = Sweeper(conn, keys, Recovery(conn, keys),
                                                self.config.heartbeat_interval, self.config.heartbeat_ttl)
            scheduler = Scheduler(shard.url, keys, self.fork_lock, shard=self._shard_name(shard.name))
            self.schedulers[shard.name] = scheduler
            scheduler.start()
            if self.config.metrics_port:
                if shard.url not in self.metrics_redis:
                    self.metrics_redis[shard.url] = connect(shard.url, name="kiq-metrics")
                with self.fork_lock:  # a scrape reads the mapping under the lock
                    self.metrics_conns[shard.name] = (self.metrics_redis[shard.url], keys)

    def _serve_metrics(self) -> None:
        if not self.config.metrics_port:
            return
        exporter.serve(self.config.metrics_host, self.config.metrics_port, self.metrics_conns, self.fork_lock)

    def _shard_name(self, name: str) -> str:
        """The shard's name for log lines: empty with one Redis, so they read as before."""
        return name if len(self.shards) > 1 else ""

    # -- signals --------------------------------------------------------

    def _handle(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.log.info("stopping", signal=signal.Signals(signum).name)
            self.stopping = True
        elif signum == signal.SIGHUP:
            self._reload()
        elif signum in (signal.SIGTTIN, signal.SIGTTOU):
            for gen in self._in_state("current"):
                kill(gen.pid, signum)
                gen.processes = max(1, gen.processes + (1 if signum == signal.SIGTTIN else -1))
        elif signum == signal.SIGTSTP:
            self.quiet = True
            self.log.info("quiet: no new jobs")
            for gen in self.generations:
                kill(gen.pid, signum)
        elif signum == signal.SIGUSR1:
            log.dump_stacks(self.log)
            for gen in self.generations:
                kill(gen.pid, signum)

    def _reload(self) -> None:
        try:
            config = self.reload()
        except ConfigError as error:
            self.log.error("reload refused: bad config, keeping the running generation", error=str(error))
            return
        except Exception:  # a bug in reading it must not end the master and its generations
            self.log.exception("reload refused: could not read the config, keeping the running generation")
            return
        for key in MASTER_ONLY:
            if getattr(config, key) != getattr(self.config, key):
                self.log.warning("setting needs a restart to change; keeping the old value", key=key)
                setattr(config, key, getattr(self.config, key))
        if config.routes.servers() != self.config.routes.servers():
            self.log.warning("setting needs a restart to change; keeping the old value",
                             key="shards" if config.shards or self.config.shards else "redis_url")
            config.redis_url, config.shards = self.config.redis_url, self.config.shards
        self._check_loading()
        for gen in self._in_state("loading"):
            self._kill_loading(gen, "superseded while loading")
        self.quiet = False
        self.log.info("reloading", generation=self.counter + 1)
        self._start_generation(config)

    # -- generations ----------------------------------------------------

    def _start_generation(self, config: Config) -> Generation:
        self.counter += 1
        number = self.counter
        read_fd, write_fd = os.pipe()
        master_pid = os.getpid()
        with self.fork_lock:
            pid = fork_holding(SUPERVISOR_SIGNALS)
        if pid == 0:
            self._become_supervisor(config, number, master_pid, read_fd, write_fd)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        gen = Generation(number, pid, config, read_fd, started=time.monotonic(), processes=config.processes)
        self.generations.append(gen)
        return gen

    def _become_supervisor(self, config: Config, number: int, master_pid: int, read_fd: int,
                           write_fd: int) -> None:
        """In the child: never return into the master's code."""
        code = 1
        try:
            inherited.close_sockets()
            self.signals.close()
            os.close(read_fd)
            for gen in self._in_state("loading"):
                os.close(gen.ready_fd)
            log.setup(config.log_level, config.log_format)
            code = Supervisor(config, number, master_pid).run(write_fd)
        except BaseException:
            self.log.error("supervisor crashed", generation=number, error=traceback.format_exc())
        finally:
            os._exit(code)

    def _check_loading(self) -> None:
        """Promote the generations that loaded the app; give up on those that failed, or
        that are still at it after ``boot_timeout`` (an import that hangs)."""
        for gen in self._in_state("loading"):
            if gen.state != "loading":
                continue  # retired by the promotion of one before it in this loop
            message = _read_report(gen.ready_fd)
            if message == "ok":
                self._promote(gen)
            elif message:
                os.close(gen.ready_fd)
                gen.state = "retiring"
                self._load_failed(gen, message.removeprefix("error "))
            elif time.monotonic() - gen.started > gen.config.boot_timeout:
                self._kill_loading(gen, "boot_timeout")
                self._load_failed(gen, f"generation {gen.number} did not load the app within "
                                       f"{gen.config.boot_timeout:g}s (boot_timeout): does a require "
                                       "module hang at import?")

    def _kill_loading(self, gen: Generation, why: str) -> None:
        """SIGKILL a generation that is still loading the app: it has no job and no worker
        yet (it says it has loaded before it forks one), and the import that holds it may
        never return to hear a TERM. One that has said so meanwhile is told to stop."""
        loaded = _read_report(gen.ready_fd) == "ok"
        os.close(gen.ready_fd)
        gen.state = "retiring"
        if loaded:
            kill(gen.pid, signal.SIGTERM)
            return
        gen.killed = why
        kill(gen.pid, signal.SIGKILL)

    def _promote(self, gen: Generation) -> None:
        """``gen`` loaded the app: it becomes current and every other generation retires."""
        gen.state = "current"
        self.booted = True
        os.close(gen.ready_fd)
        for other in self.generations:
            if other is not gen and other.state != "retiring":
                if other.state == "current":
                    metrics.restarts.labels("reload").inc(other.workers)
                self._retire(other)
        self.config = gen.config
        self._attach(gen.config.routes)
        self.log.info("generation running", generation=gen.number, pid=gen.pid, processes=gen.workers)

    def _retire(self, gen: Generation) -> None:
        if gen.state == "loading":
            self._kill_loading(gen, "superseded while loading")
            return
        gen.state = "retiring"
        kill(gen.pid, signal.SIGTERM)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            metrics.mark_dead(pid)
            gen = next((g for g in self.generations if g.pid == pid), None)
            if gen is not None:
                self.generations.remove(gen)
                self._generation_exited(gen, status)

    def _generation_exited(self, gen: Generation, status: int) -> None:
        if gen.state == "loading":
            os.close(gen.ready_fd)
            self._load_failed(gen, f"generation died while loading: {describe(status, gen.killed)}")
            return
        if gen.state != "current" or self.stopping:
            self.log.info("generation exited", generation=gen.number, status=describe(status, gen.killed))
            return
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
        if code == exits.REMOTE_STOP:  # as a Sidekiq process exits after its Web UI's Stop
            self.log.info("every worker was stopped on request (Sidekiq's Web UI, kiq stop); stopping",
                          generation=gen.number)
            self.stopping = True
            return
        self.log.error("generation exited unexpectedly", generation=gen.number, status=describe(status))
        if code in (exits.BOOT_FAILED, exits.APP_LOAD) and not self._in_state("current"):
            self.exit_code = code
            self.stopping = True
            return
        self._restart_later(time.monotonic() - gen.started)

    def _load_failed(self, gen: Generation, error: str) -> None:
        """A new generation could not load the app: keep the running one, or try again later;
        at the start, stop (exit code 3): an app that never loaded is not worth retrying."""
        if not self.booted:
            self.load_error = error
            self.stopping = True
            return
        if self._in_state("current"):
            self.log.error("reload failed, keeping the running generation", generation=gen.number,
                           error=error)
            return
        self.log.error("generation failed to load the app; trying again", generation=gen.number, error=error)
        self._restart_later(0.0)

    def _restart_later(self, lived: float) -> None:
        self.crashes = self.crashes + 1 if lived < 30 else 1
        self.restart_at = time.monotonic() + min(30.0, 0.5 * 2 ** (self.crashes - 1))

    def _restart_if_due(self) -> None:
        if self.restart_at is None or time.monotonic() < self.restart_at or self.stopping:
            return
        self.restart_at = None
        if not self._in_state("current") and not self._in_state("loading"):
            self._start_generation(self.config)

    def _stop_generations(self) -> None:
        for gen in self.generations:
            if gen.state == "loading":
                self._kill_loading(gen, "stopping while loading")
            else:
                kill(gen.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.timeout + 2 * KILL_GRACE
        while self.generations and time.monotonic() < deadline:
            self.signals.wait(0.1)
            self._reap()
        for gen in list(self.generations):  # _wait_exit takes each out of the list
            self.log.warning("generation did not stop in time, killing", generation=gen.number)
            gen.killed = "stop timeout"
            kill(gen.pid, signal.SIGKILL)
            self._wait_exit(gen)

    def _wait_exit(self, gen: Generation) -> None:
        os.waitpid(gen.pid, 0)
        if gen in self.generations:
            self.generations.remove(gen)

    def _in_state(self, state: str) -> list[Generation]:
        return [g for g in self.generations if g.state == state]

    def _next_wakeup(self) -> float:
        if self.restart_at is not None:
            return min(1.0, max(0.0, self.restart_at - time.monotonic()))
        return 1.0

    def _wait_for_redis(self) -> bool:
        """Try Redis until it lets kiq in, logging once; False if told to stop meanwhile."""
        return keep_trying(self._redis_ready, self._wait_for_signals)

    def _redis_ready(self) -> bool:
        """Whether every shard's Redis answers and lets kiq in. Raises RedisRefused if one answers
        but refuses kiq's login or commands: that is a setting to fix, not an outage to wait out."""
        for shard in self.shards:
            conn, keys = self.conns[shard.name], shard.keys(self.config.namespace)
            try:
                check_access(conn, keys.access_check, keys.schedule_channel)
                self._check_eviction(conn)
                self._check_clients(conn)
            except redis.RedisError as error:
                hint = refusal(error)
                if hint:
                    raise RedisRefused(f"{hint} ({redact(shard.url)}): {error}") from error
                if not self.redis_reported:
                    self.redis_reported = True
                    self.log.error("redis unreachable, retrying", redis=redact(shard.url), error=str(error))
                return False
        return True

    def _wait_for_signals(self, seconds: float) -> bool:
        """Handle the signals that arrive within ``seconds``; False once told to stop. Nothing
        runs yet to reload or resize: HUP, TTIN and TTOU are dropped, said so."""
        for signum in self.signals.wait(seconds):
            if signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                self.log.warning("not started yet (waiting for redis): signal ignored",
                                 signal=signal.Signals(signum).name)
                continue
            self._handle(signum)
        return not self.stopping

    def _check_eviction(self, conn: redis.Redis) -> None:
        """Warn when Redis may evict keys: an evicted queue or in-progress list loses jobs."""
        try:
            policy = conn.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:  # CONFIG is disabled on some managed services
            return
        if policy and policy != "noeviction":
            self.log.warning("redis may evict jobs: set maxmemory-policy to noeviction", policy=policy)

    def _check_clients(self, conn: redis.Redis) -> None:
        """Warn when this master's workers would hold half of Redis's ``maxclients`` or more: each
        worker holds a blocking connection per queue it watches while idle (kiq.watch), beside
        its fetcher's and heartbeat's, and at the limit Redis refuses every other client: the
        apps that enqueue, ``kiq stats``."""
        try:
            limit = int(conn.config_get("maxclients").get("maxclients") or 0)
        except (redis.ResponseError, ValueError):  # CONFIG is disabled on some managed services
            return
        needed = self.config.processes * (watched(len(self.config.queues)) + WORKER_CONNECTIONS)
        if limit and needed * 2 > limit:
            self.log.warning("this master's workers would hold half of redis's maxclients or more: serve "
                             "fewer queues per worker, run fewer processes, or raise maxclients",
                             connections=needed, maxclients=limit)

    def _title(self) -> None:
        if not self.booted:
            return  # still "kiq master [booting]"
        current = self._in_state("current")
        number = current[0].number if current else self.counter
        workers = current[0].workers if current else 0
        state = " quiet" if self.quiet else ""
        setproctitle.setproctitle(f"kiq master [gen {number}] {workers} workers{state}")


def _read_report(fd: int) -> str:
    """The line a generation wrote on its ready pipe: "ok", "error ...", or "" if none yet (or EOF)."""
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return ""
    return data.decode(errors="replace").strip()

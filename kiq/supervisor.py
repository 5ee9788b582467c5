"""One generation of workers: loads the app, forks the worker processes, reaps and replaces them.

The master forks one supervisor per generation (a reload starts a new one), so
each generation imports the app's code as it is on disk at that moment and its
workers share that code copy-on-write. Like gunicorn's arbiter, the supervisor
converges "how many workers should run" with "how many do": boot, TTIN/TTOU
and recycling all go through the same slots. Signal handlers only queue the
signal; the main loop calls one short method per signal.

When a worker dies, for any reason, its in-progress jobs are requeued at once
and a replacement starts, after a pause that grows while workers die young.
If every worker keeps dying while booting, the supervisor gives up with
``exits.BOOT_FAILED`` instead of spinning.

A worker says ``PID ready`` on the control pipe once it takes jobs, and asks
to be replaced (after ``max_jobs`` jobs, or a job past its timeout) by
writing ``PID REASON``; the supervisor also
replaces workers above ``max_memory_mb``. A replacement starts before the old
worker is told to finish its jobs and exit.

Liveness is observed here, not promised by the worker (as gunicorn's arbiter
kills a silent worker): each worker's main thread writes ``PID beat`` about
once a second, and one silent for longer than ``worker_timeout`` (before it
is ready: ``boot_timeout``) is SIGKILLed and handled as a crash: its jobs are
requeued and a replacement starts. Graceful stops beat too, so a retiring
worker is judged the same way.

With shards (kiq.shards) a worker serves one shard: the supervisor runs ``processes``
workers for each shard that holds some of ``queues``, each with those queues and that
shard's Redis (``Config.on_shard``), and requeues a dead worker's jobs, and fires the
periodic entries of the queues, on the shard they belong to. TTIN and TTOU add or remove
one worker per shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import importlib
import os
import secrets
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

import setproctitle

from kiq import exits, heartbeat, log, metrics
from kiq.config import Config, ConfigError
from kiq.connection import Outage, disconnect
from kiq.fetch import thread_count
from kiq.ledger import Crash, Ledger, stacks
from kiq.periodic import Entry, Periodic, bind_jobs, declared, merge
from kiq.recovery import Recovery
from kiq.registry import registered
from kiq.shards import SINGLE, connect_each
from kiq.signals import SignalQueue, fork_holding, kill
from kiq.worker import WORKER_SIGNALS, Worker

SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP,
                      signal.SIGUSR1)
YOUNG = 5.0  # a worker that dies sooner than this after its start failed to boot
BOOT_ATTEMPTS = 3
KILL_GRACE = 5.0
MEMORY_CHECK = 5.0


class AppLoadError(RuntimeError):
    """A module named in ``require`` failed to import."""


@dataclass
class Slot:
    """One worker position; its process comes and goes."""

    index: int
    shard: str = SINGLE  # the shard its worker serves
    pid: int = 0
    identity: str = ""
    started: float = 0.0
    failures: int = 0  # deaths in a row soon after start: sets the restart pause
    boot_failures: int = 0  # deaths in a row before the worker said it was ready
    ready: bool = False
    spawn_at: float = 0.0
    ledger: Ledger | None = None  # the running worker's (kiq.ledger)
    heard: float = 0.0  # when the worker last wrote on the control pipe, or was spawned
    killed: str = ""  # why the supervisor SIGKILLed it ("unresponsive"), until it is reaped


@dataclass
class Retiring:
    """A worker told to finish its jobs and exit (recycled, scaled down or reloaded)."""

    pid: int
    identity: str
    reason: str
    ready: bool
    heard: float
    ledger: Ledger | None = None
    killed: str = ""
    shard: str = SINGLE


class Dead(NamedTuple):
    """A worker whose jobs are still to requeue: whatever it was running is charged towards
    the poison-pill limit; ``crash`` names the one job that crashed it, when that is known."""

    shard: str
    identity: str
    running: list[str]
    crash: Crash | None


class Supervisor:
    def __init__(self, config: Config, generation: int, master_pid: int) -> None:
        self.config = config
        self.generation = generation
        self.master_pid = master_pid
        self.shards = {name: config.on_shard(name) for name in config.served_shards()}  # workers' configs
        self.slots = [Slot(n * len(self.shards) + i + 1, name) for n in range(config.processes)
                      for i, name in enumerate(self.shards)]
        self.retiring: dict[int, Retiring] = {}
        self.stopping = False
        self.quiet = False
        self.unrecovered: list[Dead] = []
        self.control_buffer = b""  # the start of a line not yet whole
        self.next_memory_check = 0.0
        self.outage = Outage("requeue of dead workers' jobs")
        self.log = log.get("kiq.supervisor").bind(generation=generation)

    def run(self, ready_fd: int) -> int:
        """The generation's whole life; reports app loading on ``ready_fd``; returns the exit code."""
        setproctitle.setproctitle(f"kiq generation {self.generation} [loading]")
        self.signals = SignalQueue(SUPERVISOR_SIGNALS)
        try:
            load_app(self.config.require)
            entries = bind_jobs(merge(self.config.periodic, declared()), registered())
        except (AppLoadError, ConfigError) as error:
            if isinstance(error, AppLoadError):
                self.log.error("cannot load the app", error=str(error), exc_info=error.__cause__)
            _report(ready_fd, f"error {error}")
            return exits.APP_LOAD
        self.signals.claim()  # the app's import may have set handlers of its own (TERM ignored)
        self._loaded(entries)
        routes = self.config.routes.including([entry.queue for entry in entries])
        self.conns = connect_each(routes, name="kiq-supervisor")
        self.recoveries = {shard.name: Recovery(self.conns[shard.name], shard.keys(self.config.namespace))
                           for shard in routes}
        self.periodics = [Periodic(self.conns[shard.name], shard.keys(self.config.namespace),
                                   [entry for entry in entries if routes.route(entry.queue) is shard])
                          for shard in routes]
        self.periodics = [periodic for periodic in self.periodics if periodic.entries]
        self.control_read, self.control_write = os.pipe()
        os.set_blocking(self.control_read, False)
        os.set_blocking(self.control_write, False)  # the workers' end: see Worker._tell
        _report(ready_fd, "ok")  # before any worker: the master kills a generation that has not said it
        while not self.stopping:
            self._spawn_due()
            self._title()
            for signum in self.signals.wait(self._next_wakeup(), also=[self.control_read]):
                self._handle(signum)
            self._read_control()
            self._kill_silent()
            self._check_memory()
            self._fire_periodic()
            self._reap()
            if self._boot_failed():
                self.log.error("every worker failed to boot; giving up (see the errors above)")
                return exits.BOOT_FAILED
            if not self.slots:  # TTOU keeps one per shard: every worker was stopped on request
                self.log.info("every worker was stopped on request; stopping")
                return exits.REMOTE_STOP
            if os.getppid() != self.master_pid:
                self.log.warning("master is gone, stopping")
                self.stopping = True
        self._stop_workers()
        return 0

    def _loaded(self, entries: list[Entry]) -> None:
        """Say what the app registered: a ``require`` that names the wrong module imports
        fine and registers nothing, and every job then fails as an unknown class."""
        jobs = sorted(registered())
        self.log.info("app loaded", require=self.config.require, jobs=jobs,
                      periodic=[entry.name for entry in entries])
        if not jobs:
            self.log.warning("no job classes loaded: list the modules that define them in require",
                             require=self.config.require)

    # -- signals --------------------------------------------------------

    def _handle(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.stopping = True
        elif signum == signal.SIGTTIN:
            for name in self.shards:
                self.slots.append(Slot(max((s.index for s in self.slots), default=0) + 1, name))
            self.log.info("one worker more", processes=len(self.slots))
        elif signum == signal.SIGTTOU:
            self._scale_down()
        elif signum == signal.SIGTSTP and not self.quiet:
            self.quiet = True
            self.log.info("quiet: workers take no new jobs")
            self._signal_workers(signal.SIGTSTP)
        elif signum == signal.SIGUSR1:
            log.dump_stacks(self.log)
            self._signal_workers(signal.SIGUSR1)

    def _scale_down(self) -> None:
        """One worker less on each shard that has more than one."""
        for name in self.shards:
            mine = [slot for slot in self.slots if slot.shard == name]
            if len(mine) > 1:
                slot = mine[-1]
                self.slots.remove(slot)
                if slot.pid:
                    self._retire(slot, "scaled down")
                self.log.info("one worker less", processes=len(self.slots), shard=name)

    def _signal_workers(self, signum: int) -> None:
        for pid in [s.pid for s in self.slots if s.pid] + list(self.retiring):
            kill(pid, signum)

    # -- workers --------------------------------------------------------

    def _spawn_due(self) -> None:
        if self.quiet or self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if not slot.pid and slot.spawn_at <= now:
                self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        nonce = secrets.token_hex(6)
        parent = os.getpid()
        config = self.shards[slot.shard]
        ledger = Ledger(thread_count(config.concurrency, len(config.queues)))
        for conn in self.conns.values():
            disconnect(conn)  # the worker builds its own
        pid = fork_holding(WORKER_SIGNALS)
        if pid == 0:
            self._become_worker(config, slot.index, nonce, parent, ledger)
        slot.pid, slot.identity, slot.started = pid, heartbeat.identity(pid, nonce), time.monotonic()
        slot.ledger = ledger
        slot.ready, slot.heard, slot.killed = False, slot.started, ""
        self.log.info("worker spawned", worker=slot.index, pid=pid, **self._shard_field(slot.shard))

    def _shard_field(self, name: str) -> dict[str, str]:
        """``shard=NAME`` for log lines, when there is more than one."""
        return {"shard": name} if self.config.routes.sharded else {}

    def _become_worker(self, config: Config, index: int, nonce: str, parent: int, ledger: Ledger) -> None:
        """In the child: never return into the supervisor's code."""
        code = 1
        try:
            self.signals.close()
            os.close(self.control_read)
            ident = heartbeat.identity(os.getpid(), nonce)
            code = Worker(config, index, ident, parent, self.control_write, ledger,
                          self.generation).run()
        except BaseException:
            self.log.error("worker crashed", worker=index, error=traceback.format_exc())
        finally:
            os._exit(code)

    def _retire(self, slot: Slot, reason: str) -> None:
        """Tell the slot's worker to finish its jobs and exit; the slot is free again."""
        self.retiring[slot.pid] = Retiring(slot.pid, slot.identity, reason, slot.ready, slot.heard,
                                           ledger=slot.ledger, shard=slot.shard)
        kill(slot.pid, signal.SIGTERM)
        slot.pid, slot.spawn_at = 0, 0.0

    def _recycle(self, pid: int, reason: str) -> None:
        """Replace a worker: the new one starts first, then the old one finishes and exits."""
        slot = next((s for s in self.slots if s.pid == pid), None)
        if slot is None or self.stopping:
            return
        if self.quiet:  # a replacement would take jobs; the old worker just stops
            self._retire(slot, reason)
            return
        self.log.info("replacing worker", worker=slot.index, pid=pid, reason=reason)
        if reason in metrics.RESTART_REASONS:
            metrics.restarts.labels(reason).inc()
        old = dataclasses.replace(slot)
        self._spawn(slot)
        self._retire(old, reason)

    def _read_control(self) -> None:
        """Every whole line the workers wrote: ``PID beat``, ``PID ready`` or ``PID REASON``."""
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.control_read, 65536):
                self.control_buffer += data
        *lines, self.control_buffer = self.control_buffer.split(b"\n")
        now = time.monotonic()
        for line in lines:
            pid_text, _, message = line.decode(errors="replace").partition(" ")
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            worker = self._find(pid)
            if worker is not None:
                worker.heard = now
            if message == "ready" and isinstance(worker, Slot):
                worker.ready, worker.boot_failures = True, 0
            elif message not in ("beat", "ready"):
                self._recycle(pid, message)

    def _find(self, pid: int) -> Slot | Retiring | None:
        return self.retiring.get(pid) or next((s for s in self.slots if s.pid == pid), None)

    def _kill_silent(self) -> None:
        """SIGKILL every worker silent for too long: stuck in C code holding the GIL, or
        stopped. It is reaped as a crash: its jobs are requeued and its slot refilled. Its
        threads' stacks, asked for first (kiq.ledger), show where it was stuck."""
        now = time.monotonic()
        silent: list[tuple[Slot | Retiring, float]] = []
        workers: list[Slot | Retiring] = [*self.slots, *self.retiring.values()]
        for worker in workers:
            limit = self.config.worker_timeout if worker.ready else self.config.boot_timeout
            if worker.pid and not worker.killed and limit and now - worker.heard > limit:
                silent.append((worker, limit))
        if not silent:
            return
        answers = stacks([w.ledger.ask_stacks(w.pid) if w.ledger else None for w, _ in silent])
        for (worker, limit), dump in zip(silent, answers, strict=True):
            self.log.error("worker unresponsive, killing", pid=worker.pid, ready=worker.ready,
                           silent_s=round(now - worker.heard, 1), limit_s=limit,
                           **({"stacks": log.bounded(dump, log.TRACEBACK_MAX)} if dump else {}))
            worker.killed = "unresponsive"
            kill(worker.pid, signal.SIGKILL)

    def _check_memory(self) -> None:
        if not self.config.max_memory_mb or time.monotonic() < self.next_memory_check:
            return
        self.next_memory_check = time.monotonic() + MEMORY_CHECK
        for slot in self.slots:
            if slot.pid and heartbeat.rss_kb(slot.pid) > self.config.max_memory_mb * 1024:
                self._recycle(slot.pid, "memory")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._exited(pid, status)
        self._recover_pending()

    def _exited(self, pid: int, status: int) -> None:
        metrics.mark_dead(pid)
        retired = self.retiring.pop(pid, None)
        if retired is not None:
            self._bury(pid, status, retired)
            self.log.info("worker retired", pid=pid, reason=retired.reason,
                          status=describe(status, retired.killed))
            return
        slot = next((s for s in self.slots if s.pid == pid), None)
        if slot is None:
            return
        self._bury(pid, status, slot)
        slot.ledger = None
        lived = time.monotonic() - slot.started
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == exits.REMOTE_STOP:
            self.log.info("worker stopped on request", worker=slot.index, pid=pid)
            self.slots.remove(slot)
            return
        if not self.stopping:
            metrics.restarts.labels(slot.killed or "crash").inc()
        level = "info" if self.stopping and os.WIFEXITED(status) else "warning"
        getattr(self.log, level)("worker exited", worker=slot.index, pid=pid,
                                 status=describe(status, slot.killed), lived_s=round(lived, 1))
        slot.failures = slot.failures + 1 if lived < YOUNG else 0
        slot.boot_failures = 0 if slot.ready else slot.boot_failures + 1
        delay = 0.0 if slot.failures == 0 else min(30.0, 0.5 * 2 ** (slot.failures - 1))
        slot.pid, slot.spawn_at = 0, time.monotonic() + delay

    def _bury(self, pid: int, status: int, worker: Slot | Retiring) -> None:
        """Queue the dead worker's jobs for recovery, with what its ledger says it was running.
        The tracebacks a fatal signal left (kiq.ledger) are logged: nothing else shows where a
        segfault happened."""
        fault = worker.ledger.fault(status) if worker.ledger is not None else ""
        if fault:
            self.log.error("worker crashed", pid=pid, status=describe(status),
                           exception=log.bounded(fault, log.TRACEBACK_MAX))
        self.unrecovered.append(Dead(worker.shard, worker.identity, *_running(worker.ledger, fault)))

    def _boot_failed(self) -> bool:
        return bool(self.slots) and all(not s.pid and s.boot_failures >= BOOT_ATTEMPTS for s in self.slots)

    def _recover_pending(self) -> None:
        """Requeue the jobs of dead workers; identities stay pending while Redis is down."""
        while self.unrecovered:
            shard, ident, running, crash = self.unrecovered[0]
            queues = self.shards[shard].queue_names
            moved = self.outage.attempt(
                functools.partial(self.recoveries[shard].requeue_all, ident, queues, running, crash=crash))
            if moved is None:
                return
            self.unrecovered.pop(0)
            if moved:
                self.log.warning("requeued jobs of dead worker", identity=ident, jobs=moved,
                                 **self._shard_field(shard))

    def _stop_workers(self) -> None:
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.config.timeout + KILL_GRACE
        while self._alive() and time.monotonic() < deadline:
            self.signals.wait(0.1)
            self._read_control()
            self._kill_silent()
            self._reap()
        for pid in self._alive():
            self.log.warning("worker did not stop in time, killing", pid=pid)
            found = self._find(pid)
            if found is not None:
                found.killed = "stop timeout"
            kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            self._exited(pid, status)
        self._recover_pending()

    def _alive(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid] + list(self.retiring)

    def _fire_periodic(self) -> None:
        """Enqueue periodic jobs whose tick has come; Redis decides which master's try counts.
        A quiet generation enqueues them too: quiet stops taking jobs, not producing them."""
        for periodic in self.periodics:
            fired = self.outage.attempt(periodic.fire_due)
            if fired:
                self.log.debug("periodic jobs enqueued", jobs=len(fired))

    def _next_wakeup(self) -> float:
        """Seconds until something is due: a worker to start or a periodic tick (at most 1)."""
        due = [s.spawn_at - time.monotonic() for s in self.slots if not s.pid and not self.quiet]
        for periodic in self.periodics:
            tick = periodic.next_wakeup()
            if tick is not None:
                due.append((tick - dt.datetime.now(dt.timezone.utc)).total_seconds())
        return min([1.0, *due]) if due else 1.0

    def _title(self) -> None:
        alive = sum(1 for s in self.slots if s.pid)
        state = " quiet" if self.quiet else ""
        setproctitle.setproctitle(f"kiq generation {self.generation} [{alive} workers]{state}")


def load_app(modules: list[str]) -> None:
    """Import the modules that define the app's jobs, before forking, so workers share them."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:
            raise AppLoadError(f"cannot load {name!r}: {type(error).__name__}: {error}") from (
                error.with_traceback(_app_frames(error.__traceback__)))


def _running(ledger: Ledger | None, fault: str) -> tuple[list[str], Crash | None]:
    """What a worker that exited was running, as its ledger says, and which of it crashed the
    worker if its fatal signal says so: then only that job is charged. The ledger is done with."""
    if ledger is None:
        return [], None
    crash = ledger.crash(fault)
    running = [crash.digest] if crash else ledger.running()
    ledger.close()
    return running, crash


def _app_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from the first frame of the app's own code: the frames of this function's
    caller and of importlib above it say nothing about what failed."""
    while tb is not None and (tb.tb_frame.f_code.co_filename in (__file__, importlib.__file__)
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")):
        tb = tb.tb_next
    return tb


def describe(status: int, cause: str = "") -> str:
    """An exit status in words; ``cause`` is why kiq itself killed the process, if it did."""
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        if cause:
            return f"killed by {name} ({cause})"
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exit code {os.WEXITSTATUS(status)}"


def _report(fd: int, message: str) -> None:
    os.write(fd, (message.replace("\n", " ") + "\n").encode())
    os.close(fd)

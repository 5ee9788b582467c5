"""The master process: loads the app, forks worker processes, reaps and replaces them.

Like gunicorn's arbiter, the master converges "how many workers should run"
with "how many do". Signal handlers only queue the signal (kiq.signals); the
main loop reads the queue and calls one short method per signal. When a worker
dies, for any reason, the master requeues its in-progress jobs at once and
starts a replacement, after a pause that grows while workers keep dying young.

The master also runs the scheduler thread. Forking while another thread holds
a lock would leave that lock held forever in the child, so the scheduler does
its Redis work under ``fork_lock`` and the master forks only while holding it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import redis
import setproctitle

from kiq import heartbeat, log
from kiq.config import Config
from kiq.connection import connect, redact
from kiq.keys import Keys
from kiq.recovery import Recovery
from kiq.scheduler import Scheduler
from kiq.signals import SignalQueue
from kiq.worker import Worker

MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
YOUNG = 5.0  # a worker that dies sooner than this after its start counts as a boot failure
KILL_GRACE = 5.0


class AppLoadError(RuntimeError):
    """A module named in ``require`` failed to import."""


@dataclass
class Slot:
    """One worker position; its process comes and goes."""

    index: int
    pid: int = 0
    identity: str = ""
    started: float = 0.0
    failures: int = 0
    spawn_at: float = 0.0


class Master:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self.slots = [Slot(n + 1) for n in range(config.processes)]
        self.stopping = False
        self.fork_lock = threading.Lock()
        self.unrecovered: list[str] = []
        self.log = log.get("kiq.master")

    def run(self) -> int:
        """Run until TERM or INT; returns the exit code."""
        setproctitle.setproctitle("kiq master [booting]")
        load_app(self.config.require)
        self.signals = SignalQueue(MASTER_SIGNALS)
        self.conn = connect(self.config.redis_url, name="kiq-master")
        if not self._wait_for_redis():
            return 0
        self.recovery = Recovery(self.conn, self.keys)
        self.scheduler = Scheduler(self.config.redis_url, self.keys, self.fork_lock)
        self.scheduler.start()
        self.log.info("master started", pid=os.getpid(), processes=self.config.processes,
                      redis=redact(self.config.redis_url))
        while not self.stopping:
            self._spawn_due()
            self._title()
            for signum in self.signals.wait(self._next_wakeup()):
                self._handle(signum)
            self._reap()
        self._stop_workers()
        self.scheduler.stop()
        self.log.info("master stopped")
        return 0

    # -- signals --------------------------------------------------------

    def _handle(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.log.info("stopping", signal=signal.Signals(signum).name)
            self.stopping = True

    # -- workers --------------------------------------------------------

    def _spawn_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if not slot.pid and slot.spawn_at <= now:
                self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        nonce = secrets.token_hex(6)
        master_pid = os.getpid()
        with self.fork_lock:
            pid = os.fork()
        if pid == 0:
            self._become_worker(slot.index, nonce, master_pid)
        slot.pid, slot.identity, slot.started = pid, heartbeat.identity(pid, nonce), time.monotonic()
        self.log.info("worker spawned", worker=slot.index, pid=pid)

    def _become_worker(self, index: int, nonce: str, master_pid: int) -> None:
        """In the child: never return into the master's code."""
        code = 1
        try:
            self.signals.close()
            ident = heartbeat.identity(os.getpid(), nonce)
            code = Worker(self.config, index, ident, master_pid).run()
        except BaseException:
            self.log.error("worker crashed", worker=index, error=traceback.format_exc())
        finally:
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._worker_exited(slot, status)
        self._recover_pending()

    def _worker_exited(self, slot: Slot, status: int) -> None:
        lived = time.monotonic() - slot.started
        self.unrecovered.append(slot.identity)
        self._recover_pending()
        level = "info" if self.stopping and os.WIFEXITED(status) else "warning"
        getattr(self.log, level)("worker exited", worker=slot.index, pid=slot.pid,
                                 status=describe(status), lived_s=round(lived, 1))
        slot.failures = slot.failures + 1 if lived < YOUNG else 0
        delay = 0.0 if slot.failures == 0 else min(30.0, 0.5 * 2 ** (slot.failures - 1))
        slot.pid, slot.spawn_at = 0, time.monotonic() + delay

    def _recover_pending(self) -> None:
        """Requeue the jobs of dead workers; identities stay pending while Redis is down."""
        while self.unrecovered:
            ident = self.unrecovered[0]
            try:
                moved = self.recovery.requeue_all(ident)
            except redis.RedisError as error:
                self.log.warning("cannot requeue yet", identity=ident, error=str(error))
                return
            self.unrecovered.pop(0)
            if moved:
                self.log.warning("requeued jobs of dead worker", identity=ident, jobs=moved)

    def _stop_workers(self) -> None:
        for slot in self.slots:
            if slot.pid:
                _kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.timeout + KILL_GRACE
        while any(s.pid for s in self.slots) and time.monotonic() < deadline:
            self.signals.wait(0.1)
            self._reap()
        for slot in self.slots:
            if slot.pid:
                self.log.warning("worker did not stop in time, killing", worker=slot.index, pid=slot.pid)
                _kill(slot.pid, signal.SIGKILL)
                _, status = os.waitpid(slot.pid, 0)
                self._worker_exited(slot, status)

    def _next_wakeup(self) -> float:
        waiting = [s.spawn_at for s in self.slots if not s.pid]
        if not waiting:
            return 1.0
        return min(1.0, max(0.0, min(waiting) - time.monotonic()))

    def _wait_for_redis(self) -> bool:
        """Ping until Redis answers, logging once; False if told to stop meanwhile."""
        pause = 0.0
        while True:
            try:
                self.conn.ping()
                return True
            except redis.RedisError as error:
                if pause == 0.0:
                    self.log.error("redis unreachable, retrying", redis=redact(self.config.redis_url),
                                   error=str(error))
                pause = min(5.0, max(0.2, pause * 2))
            for signum in self.signals.wait(pause):
                self._handle(signum)
            if self.stopping:
                return False

    def _title(self) -> None:
        alive = sum(1 for s in self.slots if s.pid)
        setproctitle.setproctitle(f"kiq master [gen 1] {alive} workers")


def load_app(modules: list[str]) -> None:
    """Import the modules that define the app's jobs, before forking, so workers share them."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:
            raise AppLoadError(f"cannot load {name!r}: {type(error).__name__}: {error}") from error


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return f"killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    return f"exit code {os.WEXITSTATUS(status)}"


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)

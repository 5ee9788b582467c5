"""A worker process: ``concurrency`` processor threads fed by one fetcher, plus a heartbeat.

The master forks it; it builds its own Redis connections, never the master's.
It stops on TERM (or a ``TERM`` in its signals list): stop fetching, give back
jobs not started, wait up to ``timeout`` for running jobs, requeue whatever is
still unfinished, exit. TSTP quiets it (no new jobs, running ones finish).
SIGINT is ignored so a terminal's Ctrl-C reaches only the master, which then
stops the workers itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import setproctitle

from kiq import heartbeat, log
from kiq.config import Config
from kiq.connection import connect
from kiq.fetch import Fetcher, QueueOrder
from kiq.keys import Keys
from kiq.processor import process
from kiq.signals import SignalQueue

WORKER_SIGNALS = (signal.SIGTERM, signal.SIGTSTP)


class Worker:
    def __init__(self, config: Config, index: int, ident: str, master_pid: int) -> None:
        self.config = config
        self.index = index
        self.identity = ident
        self.master_pid = master_pid
        self.keys = Keys(config.namespace)
        self.quiet = False
        self.stopping = False
        self.running: dict[str, dict[str, Any]] = {}
        self.log = log.get("kiq.worker").bind(worker=index, pid=os.getpid())

    def run(self) -> int:
        """The process's whole life; returns its exit code."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signals = SignalQueue(WORKER_SIGNALS)
        self.fetcher = Fetcher(
            self.config.redis_url,
            self.keys,
            self.identity,
            QueueOrder(self.config.queues, self.config.strict),
            self.config.concurrency,
        )
        self.fetcher.start()
        threads = [self._start(f"processor-{n}", self._process) for n in range(self.config.concurrency)]
        beat = self._start("heartbeat", self._beat)
        self.log.info("worker started", identity=self.identity, queues=self.config.queue_names,
                      concurrency=self.config.concurrency)
        while not self.stopping:
            self._title()
            for signum in signals.wait(1.0):
                self._handle(signal.Signals(signum).name)
            if os.getppid() != self.master_pid:
                self.log.warning("master is gone, stopping")
                self.stopping = True
        self._shutdown(threads, beat)
        return 0

    def _handle(self, name: str) -> None:
        if name == "SIGTERM":
            self.stopping = True
        elif name == "SIGTSTP" and not self.quiet:
            self.log.info("quiet: no new jobs")
            self.quiet = True
            self.fetcher.quiet()

    def _shutdown(self, threads: list[threading.Thread], beat: threading.Thread) -> None:
        """Finish or requeue every job; what is still running after ``timeout`` is requeued,
        since running a job twice is better than losing it."""
        self.log.info("stopping", running=self.fetcher.busy, timeout=self.config.timeout)
        self.quiet = True
        self.fetcher.quiet()
        deadline = time.monotonic() + self.config.timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.fetcher.close()
        beat.join(1.0)
        moved = self.fetcher.recovery.requeue_all(self.identity)
        if moved:
            self.log.warning("timeout: requeued unfinished jobs", jobs=moved)
        self.log.info("worker stopped")

    def _process(self) -> None:
        tid = threading.current_thread().name
        while True:
            unit = self.fetcher.take()
            if unit is None:
                return
            self.running[tid] = {"queue": unit.queue, "payload": unit.payload, "run_at": int(time.time())}
            try:
                outcome = process(unit.queue, unit.payload)
            finally:
                del self.running[tid]
            self.fetcher.done(unit, outcome)

    def _beat(self) -> None:
        conn = connect(self.config.redis_url, name=f"kiq-beat-{self.identity}")
        info = {
            "hostname": self.identity.split(":")[0],
            "started_at": time.time(),
            "pid": os.getpid(),
            "tag": self.config.tag,
            "concurrency": self.config.concurrency,
            "queues": self.config.queue_names,
            "labels": [],
        }
        beat = heartbeat.Heartbeat(conn, self.keys, self.identity, info, lambda: dict(self.running))
        while not self.stopping:
            try:
                remote = beat.beat(self.quiet)
            except Exception as error:  # the heartbeat must outlive any Redis trouble
                self.log.warning("heartbeat failed", error=str(error))
                remote = None
            if remote:
                os.kill(os.getpid(), signal.SIGTERM if remote == "TERM" else signal.SIGTSTP)
            for _ in range(int(heartbeat.INTERVAL * 10)):
                if self.stopping:
                    break
                time.sleep(0.1)

    def _start(self, name: str, target: Any) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _title(self) -> None:
        state = "quiet" if self.quiet else f"[{self.fetcher.busy} of {self.config.concurrency} busy]"
        setproctitle.setproctitle(f"kiq worker {self.index} {state} {','.join(self.config.queue_names)}")

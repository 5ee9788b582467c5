"""A worker process: ``concurrency`` job slots fed by one fetcher, plus a heartbeat.

Its processor threads are one per slot and one per queue (the spare ones watch idle queues),
and at most ``concurrency`` of them run a job at once.

Its supervisor forks it; it builds its own Redis connections, never its
parent's. TERM (or ``TERM`` in its signals list, as Sidekiq's Web UI sends it)
stops it: stop fetching, give back jobs not started, wait up to ``timeout`` for
running jobs, requeue whatever is still unfinished, exit. TSTP quiets it (no
new jobs, running ones finish). USR1 logs every thread's stack. INT, QUIT and
HUP are dropped (kiq.signals), so a terminal's Ctrl-C or hang-up reaches only
the master, which stops or reloads everyone.

The main thread also watches job timeouts: a job past its class's ``timeout``
is failed into the retry set at once, its thread is abandoned, and the worker
asks its supervisor to replace it. It asks the same after ``max_jobs`` jobs.

The main thread writes ``PID beat`` on the control pipe about once a second,
from boot to exit, graceful stop included: the supervisor kills a worker that
falls silent (``worker_timeout``). A job stuck in C code that holds the GIL, or
a SIGSTOP, silences it. The Redis heartbeat is no substitute: only masters
sweeping for lost hosts read it, after ``heartbeat_ttl``, and they requeue the
jobs of a worker that may still be running them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import redis
import setproctitle

from kiq import exits, heartbeat, job, log, metrics, middleware, processor
from kiq.config import Config
from kiq.connection import Outage, connect, keep_trying
from kiq.fetch import Fetcher
from kiq.keys import Keys, member
from kiq.ledger import Ledger
from kiq.metrics import record
from kiq.payload import writing_format
from kiq.processor import describe, handle, prepare, timed_out, unhandled
from kiq.retry import Outcome, frame_lines
from kiq.roundtrip import QueueOrder, Unit
from kiq.signals import SignalQueue

if TYPE_CHECKING:
    from kiq.job import Job

WORKER_SIGNALS = (signal.SIGTERM, signal.SIGTSTP, signal.SIGUSR1)
REMOTE_SIGNALS = {"TERM": signal.SIGTERM, "TSTP": signal.SIGTSTP, "TTIN": signal.SIGUSR1}
FINAL_REQUEUE_PATIENCE = 3.0  # seconds past the stop timeout; the supervisor waits 5 before SIGKILL


class JobMetrics(middleware.Middleware):
    """A worker's Prometheus counts of its jobs, as kiq's member of the server chain after the
    log fields and ahead of the app's members (Sidekiq 7 records its metrics in a server
    middleware too); the worker adds it as it starts. The app's middleware counts in a job's
    duration, as in Sidekiq.

    kiq's members stand outside the retry decision (kiq.middleware): ``call()`` returns the
    job's outcome, retry or dead included, rather than raising what the job raised. So each
    job is one ``metrics.record`` with its outcome, which keeps ``metrics.flush``'s promise (a
    scrape that counts a job processed sees its duration and outcome too); counting retries
    and dead jobs apart, where the decision is made, would let a flush fall in between. The same
    call tallies the job for the execution metrics per class and minute (kiq.execution), before
    the job is acknowledged.

    Counted elsewhere, where their fate is decided: payloads that never become a job, and jobs
    kiq itself failed on (the processor thread); a job past its ``timeout`` (the timeout
    watch). ``ending`` is asked as a job that has a ``timeout`` ends: False if the watch has
    failed it already, else the job is out of the watch's reach and counted here.
    """

    def __init__(self, ending: Callable[[], bool]) -> None:
        self.ending = ending

    def around_perform(self, job: Job, call: Callable[[], Any]) -> Any:
        started = perf_counter()
        outcome: Outcome = call()
        if not job.timeout or self.ending():
            record(job.queue_name, job.job_name, perf_counter() - started, outcome.failed, outcome.action)
        else:
            log.get("kiq.job").warning("ended after its timeout had failed it; that failure stands",
                                       elapsed_ms=round((perf_counter() - started) * 1000, 3))
        return outcome


def _frames(ident: int) -> list[str]:
    """Where the thread ``ident`` is now, innermost frame first, as Sidekiq writes backtraces."""
    frame = sys._current_frames().get(ident)
    return frame_lines(traceback.extract_stack(frame)) if frame is not None else []


class Running:
    """A job on a processor thread; ``abandoned`` once its timeout failed it."""

    __slots__ = ("abandoned", "ident", "job_class", "payload", "run_at", "started", "unit")

    def __init__(self, unit: Unit, payload: dict[str, Any], job_class: type[Job]) -> None:
        self.ident = threading.get_ident()  # made on the job's own thread
        self.unit = unit
        self.payload = payload
        self.job_class = job_class
        self.started = time.monotonic()
        self.run_at = int(time.time())
        self.abandoned = False


class Worker:
    def __init__(self, config: Config, index: int, ident: str, parent: int, control_fd: int,
                 ledger: Ledger, generation: int = 1) -> None:
        self.config = config
        self.generation = generation  # the master's count of loads of the app: 1, then one more per reload
        self.ledger = ledger
        self.index = index
        self.identity = ident
        self.keys = Keys(config.namespace)
        self.parent = parent
        self.control_fd = control_fd
        self.pid = os.getpid()
        self.quiet = False
        self.stopping = False
        self.exit_code = 0
        self.jobs_done = 0
        self.asked: set[str] = set()
        self.running: dict[str, Running] = {}
        self.dead_threads: list[int] = []  # slots of processor threads that died, to replace
        self.lock = threading.Lock()
        self.beat_outage = Outage("heartbeat")
        self.beat_done = threading.Event()
        self.log = log.get("kiq.worker").bind(worker=index, pid=os.getpid())

    def run(self) -> int:
        """The process's whole life; returns its exit code."""
        setproctitle.setproctitle(f"kiq worker {self.index} [starting]")
        self.ledger.watch_faults()
        signals = SignalQueue(WORKER_SIGNALS)
        self.heartbeat = self._heartbeat()
        self.fetcher = Fetcher(
            self.config.redis_url,
            self.keys,
            self.identity,
            QueueOrder(self.config.queues, self.config.strict),
            self.config.concurrency,
            ttl=self.config.heartbeat_ttl,
            info=self.heartbeat.info,
            tallies=metrics.tallies,
            retention=self.config.metrics_retention,
            prefetch=self.config.prefetch,
        )
        self._start_event_loop()
        if self.config.tracing:
            self._instrument()
        middleware.add_builtin(JobMetrics(self._ending))
        processor.still_ours = self._ending
        processor.end_forked_children()
        if not self._first_beat(signals) or not self.fetcher.start(alive=self._booting):
            self.log.warning("stopped before taking any job")
            return 0
        self._tell("ready")
        self.threads = [self._start_processor(n) for n in range(self.fetcher.threads)]
        beat = self._start("heartbeat", self._beat)
        self.log.info("worker started", identity=self.identity, queues=self.config.queue_names,
                      concurrency=self.config.concurrency)
        metrics.workers.set(1)
        metrics.threads.set(self.config.concurrency)
        while not self.stopping:
            self._tell("beat")
            self._title()
            metrics.busy_threads.set(self.fetcher.busy)
            for signum in signals.wait(1.0):
                self._handle(signum)
            self._watch_timeouts()
            self._replace_dead_threads()
            self._stop_without_fetcher()
            metrics.flush()
            if os.getppid() != self.parent:
                self.log.warning("supervisor is gone, stopping")
                self.stopping = True
        self._shutdown(self.threads, beat)
        return self.exit_code

    def _stop_without_fetcher(self) -> None:
        """Stop a worker whose fetcher thread has died (a bug in kiq, logged with its traceback):
        it would beat on, looking alive, and never take or acknowledge a job again. Its
        supervisor starts another; the stop requeues what it holds, as any stop does."""
        if not self.stopping and not self.fetcher.fetching:
            self.log.error("the fetcher thread died; this worker stops and its supervisor starts another")
            self.stopping, self.exit_code = True, exits.FETCHER_DIED

    def _start_event_loop(self) -> None:
        """One event loop per worker process for ``async def perform`` jobs.

        The processor thread that took an async job waits for it, so async jobs
        count against ``concurrency`` like any other.
        """
        loop = asyncio.new_event_loop()
        self._start("event-loop", functools.partial(self._run_event_loop, loop))

        def run_on_loop(awaitable: Awaitable[Any]) -> Any:
            async def wait() -> tuple[Any, BaseException | None]:
                try:
                    return await awaitable, None
                except (SystemExit, KeyboardInterrupt) as error:  # asyncio lets these out of the loop
                    return None, error

            result, error = asyncio.run_coroutine_threadsafe(wait(), loop).result()
            if error is not None:
                raise error  # in the job's own thread: its failure, as in a plain perform
            return result

        job.run_coroutine = run_on_loop

    def _run_event_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the loop until the worker ends: a job that stops it (``loop.stop()``) or lets
        an exception out of it would leave every later async job waiting for ever."""
        while not loop.is_closed():
            try:
                loop.run_forever()
            except BaseException:
                self.log.exception("the event loop of async jobs raised; it runs on")
            else:
                self.log.warning("a job stopped the event loop of async jobs; it runs on")

    def _instrument(self) -> None:
        """Trace from the config: kiq.otel's member goes after the log fields, ahead of the
        metrics, so its span holds every line and the whole job. Imported only here."""
        from kiq.otel import KiqInstrumentor

        KiqInstrumentor().instrument(span_naming=self.config.tracing_span_naming,
                                     propagation_style=self.config.tracing_propagation_style)

    def _handle(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.stopping = True
        elif signum == signal.SIGTSTP and not self.quiet:
            self.log.info("quiet: no new jobs")
            self.quiet = True
            self.fetcher.quiet()
        elif signum == signal.SIGUSR1:
            log.dump_stacks(self.log)

    def _shutdown(self, threads: list[threading.Thread], beat: threading.Thread) -> None:
        """Finish or requeue every job; what is still running after ``timeout`` is requeued,
        since running a job twice is better than losing it."""
        self.log.info("stopping", running=self.fetcher.busy, timeout=self.config.timeout)
        self.quiet = True
        self.fetcher.quiet()
        deadline = time.monotonic() + self.config.timeout
        for thread in threads:
            while thread.is_alive() and time.monotonic() < deadline:
                self._tell("beat")
                thread.join(min(1.0, max(0.0, deadline - time.monotonic())))
        late = any(thread.is_alive() for thread in threads)
        self._tell("beat")
        self.fetcher.close()
        self._tell("beat")
        self.beat_done.set()
        beat.join(self.config.heartbeat_interval + 1)
        metrics.flush()
        self._tell("beat")
        moved = self._requeue_unfinished(max(deadline, time.monotonic()) + FINAL_REQUEUE_PATIENCE)
        if moved and late:
            self.log.warning("timeout: requeued unfinished jobs", jobs=moved)
        elif moved:  # failed jobs that their retry or dead set could not take (kiq.fetch)
            self.log.warning("requeued jobs left in progress", jobs=moved)
        self.ledger.stopped()
        tracing = sys.modules.get("kiq.otel")  # loaded where tracing is on, by the config or the app
        if tracing is not None:
            tracing.KiqInstrumentor().flush()  # a worker ends in os._exit: no atexit flushes for it
        self.log.info("worker stopped")

    def _requeue_unfinished(self, deadline: float) -> int:
        """Give back what is still in progress, trying again through a Redis error until
        ``deadline``; after that the supervisor requeues it when it reaps this worker. Either
        way the stop is no crash: the ledger says so, and nothing counts towards poison."""
        outage, pause = Outage("requeue at stop"), 0.0
        while True:
            try:
                queues = self.config.queue_names
                return self.fetcher.recovery.requeue_all(self.identity, queues, crashed=False)
            except redis.RedisError as error:
                if time.monotonic() + pause >= deadline:
                    self.log.error("could not requeue unfinished jobs; the supervisor will", error=str(error))
                    return 0
                pause = outage.failed(error, pause)
                time.sleep(pause)
                self._tell("beat")

    # -- processor threads ----------------------------------------------

    def _start_processor(self, slot: int) -> threading.Thread:
        return self._start(f"processor-{slot}", functools.partial(self._process, slot))

    def _process(self, slot: int) -> None:
        """A processor thread: take jobs until the worker stops. Nothing a job, its hooks or
        its payload raise ends the thread; a thread that dies anyway (a bug in kiq) is logged
        and replaced by the main loop, as Sidekiq's manager replaces a dead processor."""
        tid = threading.current_thread().name
        unit: Unit | None = None
        try:
            while True:
                unit = self.fetcher.take()
                if unit is None:
                    return
                self.ledger.start(slot, unit.payload)
                finished = self._handle_unit(tid, unit)
                self.ledger.finish(slot)
                unit = None
                if not finished:
                    return
        except BaseException as error:
            try:
                with self.lock:
                    self.running.pop(tid, None)  # or the heartbeat and the timeout watch would still see it
                self.ledger.finish(slot)
                if unit is not None:
                    self.fetcher.done(unit, unhandled(unit.queue, unit.payload, error))
                self.log.exception("processor thread died; starting another", thread=tid)
            finally:  # whatever failed above: a slot without its thread would never work again
                with self.lock:
                    self.dead_threads.append(slot)

    def _handle_unit(self, tid: str, unit: Unit) -> bool:
        """Run one job and acknowledge it, whatever happens; False if its timeout abandoned it.

        A job that ran through the server chain was counted there (JobMetrics); one that did
        not reach it, or that kiq itself failed on, is counted here."""
        name: str | None = metrics.UNKNOWN_CLASS  # None: counted by the chain
        started = time.perf_counter()
        try:
            prepared = prepare(unit.queue, unit.payload)
            if isinstance(prepared, Outcome):
                outcome = prepared
            else:
                job_class, payload = prepared
                name = job_class.job_name
                with self.lock:
                    self.running[tid] = Running(unit, payload, job_class)
                outcome = handle(job_class, payload, unit.queue)
                name = None
        except BaseException as error:
            outcome = unhandled(unit.queue, unit.payload, error)
            log.bind_job({"queue": unit.queue})  # not the fields of whichever job came before
            self.log.error("kiq could not handle a job; it goes to the dead set as it came",
                           error=describe(error), exc_info=error)
        with self.lock:
            state = self.running.pop(tid, None)
        if state is not None and state.abandoned:
            return False  # the watchdog already failed this job; this thread is done for
        self._finish(unit, outcome, name, started)
        return True

    def _ending(self) -> bool:
        """JobMetrics asks, in a processor thread whose job (one with a timeout) has just ended:
        False if the timeout watch has failed and counted it already; else the job leaves
        ``running``, out of the watch's reach, and is this thread's to count and acknowledge."""
        tid = threading.current_thread().name
        with self.lock:
            state = self.running.get(tid)
            if state is not None and state.abandoned:
                return False
            self.running.pop(tid, None)
            return True

    def _finish(self, unit: Unit, outcome: Outcome, name: str | None, started: float) -> None:
        """Count a job the chain did not (``name``, the class label) and acknowledge ``unit``,
        counted first so that its tally rides with the acknowledgement (kiq.fetch); nothing
        raises into the thread."""
        seconds = time.perf_counter() - started
        if name is not None:
            self._record(unit.queue, name, seconds, outcome)
        self.fetcher.done(unit, outcome, seconds)
        try:
            self.jobs_done += 1
            if self.config.max_jobs and self.jobs_done >= self.config.max_jobs:
                self._ask_replacement("max_jobs")
        except Exception:
            self.log.exception("could not count a finished job")

    def _watch_timeouts(self) -> None:
        """Fail each job past its class's ``timeout`` and count it here, where its fate is
        decided: its thread is abandoned, and JobMetrics will not count it again."""
        now = time.monotonic()
        with self.lock:
            late = [r for r in self.running.values()
                    if r.job_class.timeout and not r.abandoned and now - r.started > r.job_class.timeout]
            for state in late:
                state.abandoned = True
        for state in late:
            timeout = state.job_class.timeout
            assert timeout is not None
            try:
                outcome = timed_out(state.payload, timeout, state.unit.queue, state.job_class.job_name,
                                    _frames(state.ident))
            except Exception as error:
                outcome = unhandled(state.unit.queue, state.unit.payload, error)
            self._record(state.unit.queue, state.job_class.job_name, timeout, outcome)
            self.fetcher.abandon(state.unit, outcome)
            self._ask_replacement("timeout")

    def _record(self, queue: str, name: str, seconds: float, outcome: Outcome) -> None:
        """Count a job the chain did not; a failure to count keeps no job from being acknowledged."""
        try:
            metrics.record(queue, name, seconds, outcome.failed, outcome.action)
        except Exception:
            self.log.exception("could not count a finished job")

    def _replace_dead_threads(self) -> None:
        with self.lock:
            dead, self.dead_threads = self.dead_threads, []
        for slot in dead:
            self.threads.append(self._start_processor(slot))

    def _ask_replacement(self, reason: str) -> None:
        """Tell the supervisor once per reason; it starts a new worker, then stops this one."""
        if reason in self.asked:
            return
        self.asked.add(reason)
        self._tell(reason)

    def _tell(self, message: str) -> None:
        """One line to the supervisor. The pipe is non-blocking: a line that does not fit is
        dropped rather than wedge this worker behind a supervisor that stopped reading; and
        one to a supervisor that is gone is dropped too (the main loop notices the orphaning)."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.control_fd, f"{self.pid} {message}\n".encode())

    # -- heartbeat ------------------------------------------------------

    def _heartbeat(self) -> heartbeat.Heartbeat:
        info = {
            "hostname": self.identity.split(":")[0],
            "started_at": time.time(),
            "pid": os.getpid(),
            "tag": self.config.tag,
            "concurrency": self.config.concurrency,
            "queues": self.config.queue_names,
            "labels": [],
            "generation": self.generation,  # kiq's own: the Busy page shows it, Sidekiq ignores it
        }
        capsule = heartbeat.capsule(self.config.queues, self.config.strict, self.config.concurrency)
        info["weights"] = [capsule["weights"]]  # Sidekiq 7's Busy page shows the queues in this order
        if writing_format() >= 8:  # Sidekiq 8 reads a process's queues and threads from its capsules
            info["capsules"] = {"default": capsule}
        conn = connect(self.config.redis_url, name=f"kiq-beat-{self.identity}")
        wip = [member(self.identity, queue) for queue in self.config.queue_names]
        return heartbeat.Heartbeat(conn, self.keys, self.identity, info, self._work,
                                   ttl=self.config.heartbeat_ttl, wip=wip,
                                   prefetched=lambda: self.fetcher.prefetched())

    def _first_beat(self, signals: SignalQueue) -> bool:
        """Be in ``processes`` before taking any job: a master sweeping for vanished hosts
        takes an in-progress list without a live heartbeat for an orphan. While Redis does
        not answer, keep trying, unless told to stop or orphaned (then False)."""
        def wait(seconds: float) -> bool:
            if signal.SIGTERM in signals.wait(seconds):
                self.stopping = True
            return self._booting()

        return keep_trying(lambda: self._beat_once(create=True), wait)

    def _booting(self) -> bool:
        """Between tries while Redis does not answer at boot: beat to the supervisor (this
        worker is waiting, not stuck) and say whether starting is still worth it: not told
        to stop, and the supervisor is still there."""
        self._tell("beat")
        return not self.stopping and os.getppid() == self.parent

    def _beat(self) -> None:
        """Beat until the very end of a stop: a worker still finishing its jobs must not look
        like a vanished host to another master's sweep."""
        while not self.beat_done.is_set():
            self._beat_once()
            self.beat_done.wait(self.config.heartbeat_interval)

    def _beat_once(self, create: bool = False) -> bool:
        """One heartbeat; a beat that finds the entry expired leaves it to the fetcher to
        register again and find out whether this worker was swept (kiq.lease)."""
        sent = time.monotonic()
        try:
            remote = self.heartbeat.beat(self.quiet, create)
        except heartbeat.Lapsed:
            self.fetcher.lapsed()
            return False
        except Exception as error:  # the heartbeat must outlive any Redis trouble
            self.beat_outage.failed(error)
            return False
        self.beat_outage.recovered()
        self.fetcher.renewed(sent)
        if remote in REMOTE_SIGNALS:
            self.log.info("signal from redis", signal=remote)
            if remote == "TERM":
                self.exit_code = exits.REMOTE_STOP
            os.kill(os.getpid(), REMOTE_SIGNALS[remote])
        return True

    def _work(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {
                tid: {"queue": r.unit.queue, "payload": r.unit.payload, "run_at": r.run_at}
                for tid, r in self.running.items()
                if not r.abandoned
            }

    def _start(self, name: str, target: Any) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _title(self) -> None:
        state = "quiet" if self.quiet else f"[{self.fetcher.busy} of {self.config.concurrency} busy]"
        setproctitle.setproctitle(f"kiq worker {self.index} {state} {','.join(self.config.queue_names)}")

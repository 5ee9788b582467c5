"""The ledger tells a worker's supervisor which jobs a crash charges (kiq.ledger), with real
forked processes and real fatal signals."""

from __future__ import annotations

import ctypes
import faulthandler
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable

from kiq.ledger import Ledger, stacks


def digest(payload: str) -> str:
    return hashlib.sha1(payload.encode()).hexdigest()


def worker(ledger: Ledger, end: Callable[[], None]) -> int:
    """Fork a process that runs job "a" on slot 0 and job "b" on slot 1, whose thread calls
    ``end``; returns the process's exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            ledger.watch_faults()
            ledger.start(0, "a")
            ran = threading.Thread(target=lambda: (ledger.start(1, "b"), end()))
            ran.start()
            ran.join()
            time.sleep(5)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1]


def segfault() -> None:
    ctypes.string_at(0)


def test_a_fatal_signal_names_the_job_of_the_thread_that_raised_it() -> None:
    ledger = Ledger(2)
    status = worker(ledger, segfault)
    fault = ledger.fault(status)
    assert "Segmentation fault" in fault and "in segfault" in fault
    crash = ledger.crash(fault)
    assert crash is not None
    assert (crash.digest, crash.what) == (digest("b"), "Segmentation fault")
    assert crash.frames[0].endswith(":in string_at")
    assert any(frame.startswith(f"{__file__}:") and frame.endswith(":in segfault") for frame in crash.frames)
    assert sorted(ledger.running()) == sorted([digest("a"), digest("b")])


def test_a_kill_charges_every_running_job() -> None:
    ledger = Ledger(2)
    status = worker(ledger, lambda: os.kill(os.getpid(), signal.SIGKILL))
    assert ledger.fault(status) == ""
    assert ledger.crash(ledger.fault(status)) is None
    assert sorted(ledger.running()) == sorted([digest("a"), digest("b")])


def crashing_child() -> None:
    """Fork a child (as a job may) that segfaults, and wait for it."""
    child = os.fork()
    if child == 0:
        segfault()
    os.waitpid(child, 0)


def test_a_crashed_child_that_a_job_forked_writes_no_dump_of_the_worker() -> None:
    """The child inherits the handler and the id of the job's thread: its dump, had it gone to
    the worker's file, would pass for the worker's when the worker dies of a fatal signal
    that leaves none (a C stack overflow), and charge the forking job alone."""
    ledger = Ledger(2)
    killed = worker(ledger, lambda: (crashing_child(), os.kill(os.getpid(), signal.SIGKILL)))
    assert ledger.fault(killed) == ""

    ledger = Ledger(2)
    silent = worker(ledger, lambda: (crashing_child(), faulthandler.disable(), segfault()))
    assert os.WTERMSIG(silent) == signal.SIGSEGV
    assert ledger.fault(silent) == "" and ledger.crash("") is None

    ledger = Ledger(2)
    crashed = worker(ledger, lambda: (crashing_child(), ledger.finish(1), ledger.start(1, "c"), segfault()))
    fault = ledger.fault(crashed)
    assert fault.count("Fatal Python error") == 1
    crash = ledger.crash(fault)
    assert crash is not None and crash.digest == digest("c")


def deep(levels: int, reached: threading.Barrier, until: threading.Event) -> None:
    if levels:
        deep(levels - 1, reached, until)
    else:
        reached.wait(10)
        until.wait(10)


def test_a_dump_of_many_deep_stacks_still_names_the_crashing_thread() -> None:
    """Twenty threads 100 frames deep make a dump of well over 64 kB: the whole of the last
    dump is read, not its end alone (which had lost the header and the crashing thread)."""

    def crash_among_deep_threads() -> None:
        until, reached = threading.Event(), threading.Barrier(21)
        for _ in range(20):
            threading.Thread(target=deep, args=(100, reached, until), daemon=True).start()
        reached.wait(10)  # every thread is 100 frames deep
        segfault()

    ledger = Ledger(2)
    fault = ledger.fault(worker(ledger, crash_among_deep_threads))
    assert len(fault) > 100_000
    crash = ledger.crash(fault)
    assert crash is not None and crash.digest == digest("b")


def test_a_worker_that_stopped_as_told_charges_nothing() -> None:
    ledger = Ledger(2)
    status = worker(ledger, lambda: (ledger.stopped(), segfault()))
    assert ledger.crash(ledger.fault(status)) is None
    assert ledger.running() == []


def idle_worker(ledger: Ledger) -> int:
    """Fork a worker that waits in a Python frame of its own; returns its pid once the worker
    has registered the handler that writes its stacks (a signal before would kill it)."""
    ready, told = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ledger.watch_faults()
            os.write(told, b".")
            deep(3, threading.Barrier(1), threading.Event())
        finally:
            os._exit(1)
    os.close(told)
    assert os.read(ready, 1) == b"."
    os.close(ready)
    return pid


def test_silent_workers_are_asked_for_their_stacks_together() -> None:
    """The supervisor asks every worker it is about to kill at once, then reads what each wrote:
    a stopped one writes nothing, and costs the others nothing."""
    first, second = Ledger(1), Ledger(1)
    stopped, live = idle_worker(first), idle_worker(second)
    try:
        os.kill(stopped, signal.SIGSTOP)
        answers = stacks([first.ask_stacks(stopped), None, second.ask_stacks(live)])
        assert answers[:2] == ["", ""]
        assert "Current thread" in answers[2] and "in idle_worker" in answers[2], answers[2]
    finally:
        for pid in (stopped, live):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

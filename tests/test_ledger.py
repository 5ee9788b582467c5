"""The ledger tells a worker's supervisor which jobs a crash charges (kiq.ledger), with real
forked processes and real fatal signals."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable

from kiq.ledger import Ledger


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


def test_the_dump_of_a_crashed_child_that_a_job_forked_charges_no_one() -> None:
    """A child forked by the job on slot 1 inherits the handler and the thread's id; its
    segfault's dump is in the file when the worker itself is killed, then when it segfaults."""

    def crashing_child() -> None:
        child = os.fork()
        if child == 0:
            segfault()
        os.waitpid(child, 0)

    ledger = Ledger(2)
    killed = worker(ledger, lambda: (crashing_child(), os.kill(os.getpid(), signal.SIGKILL)))
    assert ledger.fault(killed) == ""
    assert ledger.crash(ledger.fault(killed)) is None

    ledger = Ledger(2)
    crashed = worker(ledger, lambda: (crashing_child(), ledger.finish(1), ledger.start(1, "c"), segfault()))
    fault = ledger.fault(crashed)
    assert fault.count("Fatal Python error") == 1
    crash = ledger.crash(fault)
    assert crash is not None and crash.digest == digest("c")


def test_a_worker_that_stopped_as_told_charges_nothing() -> None:
    ledger = Ledger(2)
    status = worker(ledger, lambda: (ledger.stopped(), segfault()))
    assert ledger.crash(ledger.fault(status)) is None
    assert ledger.running() == []

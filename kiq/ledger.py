"""Which jobs a worker's threads are running, in memory that its supervisor reads after a crash.

A job that kills its worker (a segfault, the OOM killer, a SIGKILL for not answering) is
charged towards the poison-pill limit; jobs the worker had only prefetched, or had finished
without acknowledging yet, must not be. The worker knows which is which but dies with that
knowledge, and telling Redis at every job start would cost a round trip per job. So each
processor thread writes its thread id and the SHA-1 digest of the payload it runs into its own
slot of a shared anonymous mapping that the supervisor made before the fork: plain memory
writes, and the mapping outlives the worker. Recovery matches the digests against
``redis.sha1hex`` of each job in the worker's in-progress lists.

A fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) also names the thread that raised
it: the worker points faulthandler at a file the supervisor made, and the dump's "Current
thread" is that thread's id. When it is a processor thread running a job, that job alone is
charged; the jobs that ran beside it were not the crash's cause, and charging them would bury
them with the culprit. The dump is also the only traceback a segfault leaves, so the
supervisor logs it. A worker silent for too long (stuck in C code that holds the GIL) is
asked for its stacks the same way before it is killed: faulthandler's handler of STACKS
needs no GIL.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import mmap
import os
import re
import signal
import struct
import sys
import tempfile
import threading
import time
from typing import NamedTuple

from kiq.connection import wire
from kiq.signals import kill

IDENT = struct.Struct("=Q")  # threading.get_ident(), as faulthandler prints it
DIGEST = 20
SLOT = IDENT.size + DIGEST
EMPTY = bytes(DIGEST)
STOPPED = 1  # the first byte: the worker finished its stop (its unfinished jobs are no crash's)
DUMP_MAX = 8_000_000  # bytes of the file's end searched for the last dump (100 threads of 100 frames)
CURRENT_THREAD = re.compile(r"^Current thread (0x[0-9a-f]+)", re.MULTILINE)
HEADER = "Fatal Python error"  # each dump's first line
FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$', re.MULTILINE)
STACKS = signal.SIGUSR2  # a live worker writes every thread's stack on it
STACKS_WAIT = 0.5  # seconds a silent worker gets to write them
FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT})


class Crash(NamedTuple):
    """A job whose thread raised a fatal signal: its payload's digest, the signal in words
    ("Segmentation fault") and the thread's frames, innermost first, as Sidekiq's
    ``error_backtrace`` lists them."""

    digest: str
    what: str
    frames: list[str]


class Asked(NamedTuple):
    """A worker asked for its stacks: its dump file, and where the answer begins."""

    fd: int
    start: int


class Ledger:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, 1 + slots * SLOT)
        self._dump = _dump_file()

    def watch_faults(self) -> None:
        """In the worker: let faulthandler write a fatal signal's tracebacks where the
        supervisor reads them."""
        if self._dump >= 0:
            faulthandler.enable(file=self._dump, all_threads=True)
            faulthandler.register(STACKS, file=self._dump, all_threads=True)
            os.register_at_fork(after_in_child=_own_faults)

    def ask_stacks(self, pid: int) -> Asked | None:
        """Send STACKS to the live worker ``pid``, whose answer ``stacks`` reads; None if there
        is no file to read it from."""
        if self._dump < 0:
            return None
        start = os.fstat(self._dump).st_size
        kill(pid, STACKS)
        return Asked(self._dump, start)

    def start(self, slot: int, payload: str) -> None:
        offset = 1 + slot * SLOT
        digest = hashlib.sha1(wire(payload), usedforsecurity=False).digest()
        self._map[offset:offset + SLOT] = IDENT.pack(threading.get_ident()) + digest

    def finish(self, slot: int) -> None:
        offset = 1 + slot * SLOT + IDENT.size
        self._map[offset:offset + DIGEST] = EMPTY

    def stopped(self) -> None:
        """Mark a worker that stopped as told: whatever it still ran is not a crash's doing."""
        self._map[0] = STOPPED

    def fault(self, status: int) -> str:
        """What faulthandler wrote when the worker died of ``status``'s fatal signal: the file's
        last dump, from its header on; "" if there is none (a fatal signal can leave none: a C
        stack overflow, a fatal error that writes to stderr). A job's forked child writes its
        own dump to its stderr (``_own_faults``), never here."""
        if self._dump < 0 or not (os.WIFSIGNALED(status) and os.WTERMSIG(status) in FAULTS):
            return ""
        size = os.fstat(self._dump).st_size
        tail = os.pread(self._dump, DUMP_MAX, max(0, size - DUMP_MAX))
        at = tail.rfind(HEADER.encode())
        return tail[at:].decode(errors="replace") if at >= 0 else ""

    def running(self) -> list[str]:
        """Hex digests of the payloads being run, unless the worker stopped as told."""
        return list(self._jobs().values())

    def crash(self, fault: str) -> Crash | None:
        """The job whose thread raised ``fault``'s fatal signal, if that thread was running one
        and the worker was not stopped as told."""
        current = CURRENT_THREAD.search(fault)
        digest = self._jobs().get(int(current[1], 16)) if current else None
        if current is None or digest is None:
            return None
        what = fault.partition("\n")[0].removeprefix(HEADER).strip(": ") or "fatal signal"
        section = fault[current.end():].partition("\n\n")[0]
        frames = [f"{file}:{line}:in {name}" for file, line, name in FRAME.findall(section)]
        return Crash(digest, what, frames)

    def _jobs(self) -> dict[int, str]:
        """The running jobs' digests by their threads' ids; none once the worker stopped as told."""
        if self._map[0] == STOPPED:
            return {}
        jobs: dict[int, str] = {}
        for slot in range(self.slots):
            offset = 1 + slot * SLOT
            digest = self._map[offset + IDENT.size:offset + SLOT]
            if digest != EMPTY:
                jobs[IDENT.unpack_from(self._map, offset)[0]] = digest.hex()
        return jobs

    def close(self) -> None:
        self._map.close()
        if self._dump >= 0:
            os.close(self._dump)


def _own_faults() -> None:
    """In the child of a fork a job makes: its own fatal signal goes to its stderr, not into the
    worker's file, where it would pass for the worker's (naming the forking job's thread)."""
    faulthandler.unregister(STACKS)
    with contextlib.suppress(ValueError, AttributeError, OSError, RuntimeError):  # no usable stderr
        faulthandler.enable(file=sys.stderr, all_threads=True)
        return
    faulthandler.disable()


def _dump_file() -> int:
    """A file for faulthandler's dumps that needs no writable directory (memfd_create, on
    Linux), else an unlinked temporary file; -1 when neither can be made: the worker then runs
    without (its crashes charge every job it was running, and leave no stacks)."""
    with contextlib.suppress(AttributeError, OSError):
        return os.memfd_create("kiq-ledger")
    with contextlib.suppress(OSError):
        fd, path = tempfile.mkstemp(prefix="kiq-ledger-")
        os.unlink(path)
        return fd
    return -1


def stacks(asked: list[Asked | None]) -> list[str]:
    """What each worker that ``Ledger.ask_stacks`` asked wrote: every thread's stack, or "" for
    one that wrote none within STACKS_WAIT (it is stopped, say). They are waited for together:
    ten silent workers found at once hold the supervisor's loop for STACKS_WAIT, not ten times."""
    sizes = {at: at.start for at in asked if at is not None}
    waiting = set(sizes)
    deadline = time.monotonic() + STACKS_WAIT
    while waiting and time.monotonic() < deadline:
        time.sleep(0.02)
        for at in list(waiting):
            grown = os.fstat(at.fd).st_size
            if sizes[at] > at.start and grown == sizes[at]:
                waiting.discard(at)  # written, and no longer growing
            sizes[at] = grown
    return ["" if at is None else os.pread(at.fd, min(sizes[at] - at.start, DUMP_MAX), at.start)
            .decode(errors="replace") for at in asked]  # logged bounded

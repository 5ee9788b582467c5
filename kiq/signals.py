"""Signals as a queue that a main loop drains, never work done inside a handler.

The handlers are empty: Python's wakeup fd writes each signal's number into a
pipe, and ``wait`` reads them back. Logging, reaping or taking a lock inside a
handler can deadlock (the handler runs between two bytecodes of whatever the
main thread was doing); here that cannot happen.

A terminal sends INT (Ctrl-C), QUIT (Ctrl-\\) and HUP (hang-up) to its whole
foreground process group, and only the master acts on them: it stops on INT
and reloads on HUP. A child drops them (``close``) through a handler that does
nothing rather than SIG_IGN, which a program that a job executes would inherit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterable, Sequence
from types import FrameType

TERMINAL = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Present only so the signal is caught; the wakeup fd carries it."""


class SignalQueue:
    def __init__(self, signums: Iterable[int]) -> None:
        self.signums = list(signums)
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.claim()

    def claim(self) -> None:
        """Make the handlers and the wakeup fd this queue's again: after importing an app,
        which may have set its own. A signal held since the fork (``fork_holding``) arrives now."""
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for signum in self.signums:
            signal.signal(signum, _ignore)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums)

    def wait(self, timeout: float, also: Sequence[int] = ()) -> list[int]:
        """Signals received, in order, waiting up to ``timeout`` seconds for the first
        signal or for one of the ``also`` descriptors to become readable."""
        try:
            ready, _, _ = select.select([self.read_fd, *also], [], [], max(timeout, 0.0))
        except InterruptedError:
            ready = [self.read_fd]
        if self.read_fd not in ready:
            return []
        try:
            return list(os.read(self.read_fd, 512))
        except BlockingIOError:
            return []

    def close(self) -> None:
        """Give the signals back to their defaults, as a freshly forked child must, except
        the terminal's, which a child drops."""
        signal.set_wakeup_fd(-1)
        for signum in {*self.signums, *TERMINAL}:
            signal.signal(signum, _ignore if signum in TERMINAL else signal.SIG_DFL)
        os.close(self.read_fd)
        os.close(self.write_fd)


def fork_holding(signums: Iterable[int]) -> int:
    """``os.fork``, with ``signums`` held pending in the child until its SignalQueue claims
    them. Sent before, a signal would run this process's handler in the child, which writes to
    this process's wakeup pipe, and be lost (a worker told to stop just after its fork waited out
    the stop timeout). This process's own mask is as it was afterwards, even if the fork fails."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    pid = -1
    try:
        pid = os.fork()
        return pid
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def kill(pid: int, signum: int) -> None:
    """Send a signal to a process that may have exited already."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
